"""Several models or artifacts on the same data, side by side, against the first (the reference).

Every model is measured on the same pairs (LFW pairs, or one identity-folder pair list drawn before any
face is found), by the same code as `edgeface eval`. Per model: accuracy, FNMR@FMR with intervals, EER,
rates at its own operating threshold (shipped, else FMR 1e-3 on these pairs; LFW: the best-accuracy
threshold, as `eval` reports), per-group rates and their change from the reference with the flag rule
(`groups.compare_groups`), agreement with the reference (same decision on a pair; embedding cosine when
the embedding spaces can be compared), size, and `edgeface profile` latency for artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.eval.groups import compare_groups
from edgeface.eval.load import EvalModel
from edgeface.eval.plots import Curve
from edgeface.eval.rates import FMR_TARGETS, PairScores, equal_error_rate, fnmr_at_fmr, rates_at_threshold
from edgeface.io import printable


@dataclass
class Measured:
    """One model on the data: its JSON record and what the comparison needs beyond it."""

    record: dict[str, Any]
    scores: np.ndarray  # one score per pair of the shared pair list; NaN where the pair was lost
    labels: np.ndarray  # True for genuine pairs
    threshold: float  # operating threshold
    embeddings: np.ndarray | None = field(default=None, repr=False)  # per image, for cosine agreement
    ok: np.ndarray | None = field(default=None, repr=False)  # per image: a face was found
    curve: Curve | None = None


def measure_lfw(
    model: EvalModel,
    pairs_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    folds: Sequence[int],
    groups: dict[str, str] | None,
    flip: bool,
    batch_size: int,
    bootstrap: int,
    seed: int,
) -> Measured:
    from edgeface.data.lfw import read_pairs, select_folds
    from edgeface.eval.lfw_eval import report_from_scores, test_images
    from edgeface.eval.load import check_finite
    from edgeface.eval.verification import cosine_scores

    pairs = select_folds(read_pairs(pairs_file), tuple(folds))
    paths = test_images(pairs_file, images_dir, folds)
    emb = np.asarray(model.embedder(flip=flip, batch_size=batch_size, progress=model.label)(paths))
    check_finite(emb, paths)
    index = {p: i for i, p in enumerate(paths)}
    root = Path(images_dir)
    left = np.array([index[root / p.left] for p in pairs])
    right = np.array([index[root / p.right] for p in pairs])
    scores = cosine_scores(emb[left], emb[right])
    report = report_from_scores(pairs, scores, groups)
    labels = np.asarray(report.labels, bool)
    names = sorted({n for p in pairs for n in p.identities})
    ident = {n: i for i, n in enumerate(names)}
    ids = np.array([[ident[a], ident[b]] for a, b in (p.identities for p in pairs)])
    ps = PairScores(scores[labels], scores[~labels], ids[labels, 0], ids[~labels], len(names))
    fmr_table = fnmr_at_fmr(ps, FMR_TARGETS, bootstrap, seed)
    at = rates_at_threshold(ps.genuine, ps.impostor, report.threshold)
    at["source"] = "best accuracy on these pairs (LFW protocol)"
    record = {
        "accuracy": {"value": report.acc, "std": report.acc_std, "definition": "LFW k-fold accuracy"},
        "tar_at_far": report.tar_at_far,
        "fnmr_at_fmr": fmr_table,
        "eer": equal_error_rate(ps.genuine, ps.impostor),
        "at_threshold": at,
        "groups": report.groups,
        "pairs": {"genuine": int(labels.sum()), "impostor": int((~labels).sum()), "lost": 0},
        "failed_images": {"count": 0, "images": []},
    }
    return Measured(
        record, scores, labels, report.threshold, emb, np.ones(len(paths), bool), _curve(model, ps, record)
    )


def measure_folders(
    model: EvalModel,
    data: Any,
    pairs: Any,
    groups: dict[str, str] | None,
    aligned: bool,
    flip: bool,
    face_policy: str,
    detector: str | os.PathLike[str] | None,
    refine: bool | str | os.PathLike[str],
    bootstrap: int,
    seed: int,
) -> Measured:
    from edgeface.eval.acquire import acquire
    from edgeface.eval.folder_eval import evaluate_folders, pair_scores

    got = acquire(model.net, data.images, aligned, flip, face_policy, detector, refine, progress=model.label)
    thr = model.spec.threshold
    folder = evaluate_folders(data, pairs, got, thr, "shipped", groups, bootstrap=bootstrap, seed=seed)
    d = folder.to_dict()
    at = d["at_threshold"]
    if at is None:  # no shipped threshold: the operating point is FMR 1e-3 on these pairs
        at = rates_at_threshold(folder.scores.genuine, folder.scores.impostor, folder.threshold)
        at["source"] = d["operating_threshold"]["source"]
    fm, fn = at["fmr"]["rate"], at["fnmr"]["rate"]
    every = np.concatenate([pairs.genuine, pairs.impostor])
    labels = np.r_[np.ones(len(pairs.genuine), bool), np.zeros(len(pairs.impostor), bool)]
    scores = np.full(len(every), np.nan)
    keep = got.ok[every[:, 0]] & got.ok[every[:, 1]]
    scores[keep] = pair_scores(got.embeddings, every[keep])
    record = {
        "accuracy": {
            "value": 1.0 - (fm + fn) / 2,
            "std": None,
            "definition": "balanced accuracy at the operating threshold: 1 - (FMR + FNMR) / 2",
        },
        "tar_at_far": None,
        "fnmr_at_fmr": d["fnmr_at_fmr"],
        "eer": d["eer"],
        "at_threshold": at,
        "groups": d["groups"],
        "pairs": {**d["pairs"]},
        "failed_images": d["failed_images"],
    }
    ps = folder.scores
    return Measured(
        record, scores, labels, folder.threshold, got.embeddings, got.ok, _curve(model, ps, record)
    )


def _curve(model: EvalModel, ps: PairScores, record: dict[str, Any]) -> Curve:
    from edgeface.eval.rates import det_curve

    fmr, fnmr = det_curve(ps.genuine, ps.impostor)
    points = [
        (k, r["fmr"], r["fnmr"], tuple(r["ci95"]) if r["ci95"] else None)
        for k, r in record["fnmr_at_fmr"].items()
        if r["resolved"]
    ]
    return Curve(model.label, fmr, fnmr, ps.genuine.size, ps.impostor.size, points)


def agreement(reference: Measured, other: Measured) -> dict[str, Any]:
    """How often `other` decides a pair as the reference does (each at its own operating threshold), the
    correlation of their scores, and, for embeddings of one size, their cosine on the same images."""
    both = np.isfinite(reference.scores) & np.isfinite(other.scores)
    a = reference.scores[both] >= reference.threshold
    b = other.scores[both] >= other.threshold
    y = reference.labels[both]
    n = int(both.sum())
    out: dict[str, Any] = {
        "pairs": n,
        "decision_agreement": float(np.mean(a == b)) if n else None,
        "only_reference_wrong": int(np.sum((a != y) & (b == y))),
        "only_this_wrong": int(np.sum((a == y) & (b != y))),
        "both_wrong": int(np.sum((a != y) & (b != y))),
        "score_correlation": float(np.corrcoef(reference.scores[both], other.scores[both])[0, 1])
        if n > 1 and np.std(reference.scores[both]) > 0 and np.std(other.scores[both]) > 0
        else None,
        "embedding_cosine": None,
    }
    e1, e2 = reference.embeddings, other.embeddings
    if e1 is not None and e2 is not None and e1.shape == e2.shape and reference.ok is not None:
        from edgeface.eval.verification import cosine_agreement

        ok = reference.ok & other.ok if other.ok is not None else reference.ok
        if ok.any():
            out["embedding_cosine"] = cosine_agreement(e1[ok], e2[ok])
    return out


def latency(model: EvalModel, runs: int, threads: int | None, detector: str | os.PathLike[str] | None) -> Any:
    """`edgeface profile` of an artifact (inference and pipeline ms); None for a PyTorch model."""
    if model.kind != "artifact" or runs <= 0:
        return None
    from edgeface.runtime.profile import profile_artifact

    assert model.file is not None
    r = profile_artifact(
        model.file,
        None,
        runs,
        min(5, runs),
        threads,
        detector,
        operators=False,
        progress=False,
        max_seconds=120,
    )
    keep = ("mean", "p50", "p90", "min")
    return {
        "runs": r["runs"],
        "threads": r["threads"],
        "init_ms": r["init_ms"],
        "inference_ms": {k: r["inference_ms"][k] for k in keep},
        "pipeline_ms": {k: r["pipeline_ms"][k] for k in keep} if r["pipeline_ms"] else None,
        "image": printable(r["image"]) if r["image"] else None,
    }


def assemble(models: list[EvalModel], measured: list[Measured], latencies: list[Any]) -> list[dict[str, Any]]:
    """The JSON record of each model, the reference first, with its comparison to the reference."""
    ref = measured[0]
    out = []
    for n, (m, meas, lat) in enumerate(zip(models, measured, latencies, strict=True)):
        spec = m.spec
        rec: dict[str, Any] = {
            "label": m.label,
            "reference": n == 0,
            "kind": m.kind,
            "file": printable(m.file) if m.file else None,
            "size_bytes": m.size_bytes,
            "precision": spec.precision,
            "embedding_dim": int(spec.embedding_dim),
            "shipped_threshold": spec.threshold,
            "operating_threshold": meas.threshold,
            **meas.record,
            "latency": lat,
        }
        if n > 0:
            rec["agreement_with_reference"] = agreement(ref, meas)
            g0, g1 = ref.record["groups"], meas.record["groups"]
            rec["group_changes"] = compare_groups(g0, g1) if g0 and g1 else None
        out.append(rec)
    return out
