"""Verification on a user's identity-folder dataset: FNMR@FMR (NIST FRVT style), rates at the shipped
threshold, failures to acquire, per-group rates.

The pairs (edgeface.eval.dataset.make_pairs) are fixed before any face is found; a pair with an image that
gave no face is *lost*: it is left out of the rates and counted, and the rates at the shipped threshold are
also given counting lost genuine pairs as false non-matches (what a user of the device experiences: no
face, no match) and lost impostor pairs as correct rejections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.eval.acquire import Acquired
from edgeface.eval.dataset import IdentityFolders, Pairs
from edgeface.eval.groups import group_rates
from edgeface.eval.rates import (
    BOOTSTRAP,
    FMR_TARGETS,
    PairScores,
    equal_error_rate,
    fmr_key,
    fnmr_at_fmr,
    rate,
    rates_at_threshold,
    threshold_at_fmr,
)
from edgeface.io import printable

FALLBACK_FMR = 1e-3  # operating point of the per-group rates when the model ships no threshold
CHUNK = 1 << 20


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (left, right) index pair, in chunks (pairs may number tens of millions)."""
    e = np.asarray(embeddings, np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(pairs), np.float64)
    for s in range(0, len(pairs), CHUNK):
        p = pairs[s : s + CHUNK]
        out[s : s + CHUNK] = np.einsum("nd,nd->n", e[p[:, 0]], e[p[:, 1]], dtype=np.float64)
    return out


@dataclass
class FolderReport:
    summary: dict[str, Any]  # the JSON report
    scores: PairScores = field(repr=False)
    genuine_pairs: np.ndarray = field(repr=False)  # (g, 2) image indices of the scored genuine pairs
    impostor_pairs: np.ndarray = field(repr=False)
    threshold: float = 0.0  # the operating threshold (shipped, --threshold, or FMR 1e-3 on this data)

    def to_dict(self) -> dict[str, Any]:
        return self.summary

    @property
    def det(self) -> tuple[np.ndarray, np.ndarray]:
        from edgeface.eval.rates import det_curve

        return det_curve(self.scores.genuine, self.scores.impostor)


def evaluate_folders(
    data: IdentityFolders,
    pairs: Pairs,
    acquired: Acquired,
    threshold: float | None,
    threshold_source: str,
    groups: dict[str, str] | None = None,
    targets: tuple[float, ...] = FMR_TARGETS,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> FolderReport:
    """All metrics of one model on one dataset. `threshold` is the model's shipped (or given) threshold;
    None when it has none, then per-group rates use the FMR 1e-3 threshold of these pairs."""
    ok = acquired.ok
    keep_g = ok[pairs.genuine[:, 0]] & ok[pairs.genuine[:, 1]] if len(pairs.genuine) else np.zeros(0, bool)
    keep_i = ok[pairs.impostor[:, 0]] & ok[pairs.impostor[:, 1]]
    gp, ip = pairs.genuine[keep_g], pairs.impostor[keep_i]
    if len(gp) == 0:
        raise EdgefaceError(
            "no genuine pairs to score: every identity needs at least two images with a usable face "
            f"({len(acquired.failures)} of {len(data.images)} images gave none)"
        )
    if len(ip) == 0:
        raise EdgefaceError("no impostor pairs to score: images of at least two identities must give a face")
    ident = data.identity
    scores = PairScores(
        genuine=pair_scores(acquired.embeddings, gp),
        impostor=pair_scores(acquired.embeddings, ip),
        genuine_ids=ident[gp[:, 0]],
        impostor_ids=np.stack([ident[ip[:, 0]], ident[ip[:, 1]]], axis=1),
        n_identities=len(data.names),
    )
    lost_g, lost_i = int((~keep_g).sum()), int((~keep_i).sum())
    at: dict[str, Any] | None = None
    if threshold is not None:
        at = rates_at_threshold(scores.genuine, scores.impostor, threshold)
        at["source"] = threshold_source
        fn, fm = at["fnmr"], at["fmr"]
        at["fnmr_counting_failures"] = rate(fn["errors"] + lost_g, fn["n"] + lost_g)
        at["fmr_counting_failures"] = rate(fm["errors"], fm["n"] + lost_i)
        operating, operating_source = threshold, threshold_source
    else:
        operating = threshold_at_fmr(scores.impostor, FALLBACK_FMR).threshold
        operating_source = f"FMR {fmr_key(FALLBACK_FMR)} on these pairs (the model ships no threshold)"
    group_report = None
    if groups is not None:
        names = data.names
        ids = [(names[ident[a]], names[ident[b]]) for a, b in np.concatenate([gp, ip])]
        labels = np.r_[np.ones(len(gp), bool), np.zeros(len(ip), bool)]
        group_report = group_rates(ids, np.r_[scores.genuine, scores.impostor], labels, groups, operating)
        group_report["threshold_source"] = operating_source
    n_img = len(data.images)
    summary: dict[str, Any] = {
        "kind": "identity-folders",
        "data": {
            "root": printable(data.root),
            "identities": len(data.names),
            "images": n_img,
            "images_outside_identity_folders": [printable(p) for p in data.loose],
        },
        "failed_images": {
            "count": len(acquired.failures),
            "rate": len(acquired.failures) / n_img,
            "images": acquired.failures_json(),
        },
        "photos_with_several_faces": len(acquired.several_faces),
        "photos_with_degenerate_detections": acquired.photos_with_degenerate,
        "pairs": {
            "genuine": len(gp),
            "impostor": len(ip),
            "genuine_lost": lost_g,
            "impostor_lost": lost_i,
            "impostor_possible": pairs.impostor_possible,
            "impostor_sampled": pairs.sampled,
            "seed": pairs.seed,
        },
        "fnmr_at_fmr": fnmr_at_fmr(scores, targets, bootstrap, seed),
        "bootstrap_replicates": bootstrap,
        "eer": equal_error_rate(scores.genuine, scores.impostor),
        "at_threshold": at,
        "operating_threshold": {"threshold": operating, "source": operating_source},
        "groups": group_report,
    }
    return FolderReport(summary, scores, gp, ip, operating)
