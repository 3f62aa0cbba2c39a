"""LFW View 2 verification of any Embedder: the number every edgeface claim is measured with.

Works on an `Embedder` (paths -> embeddings), so a PyTorch model, an ONNX/TFLite artifact and a compressed
model are scored by the same code on the same pairs. Default folds are the test split (6-10).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.data.lfw import TEST_FOLDS, Pair, read_pairs, select_folds
from edgeface.errors import EdgefaceError
from edgeface.eval.groups import group_rates, read_groups
from edgeface.eval.verification import best_threshold, cosine_scores, kfold_accuracy, roc_curve, tar_at_far
from edgeface.io import atomic_write_text, dumps_json

# Same shape as edgeface.eval.embed.Embedder, restated so this module imports without torch.
Embedder = Callable[[Sequence[Path]], np.ndarray]
FAR_TARGETS = (1e-3, 1e-2)


def far_key(far: float) -> str:
    """1e-3 -> '1e-03': the key of TAR@FAR results in reports and JSON."""
    return f"{far:.0e}"


@dataclass
class VerificationReport:
    acc: float  # mean k-fold accuracy, a fraction
    acc_std: float
    tar_at_far: dict[str, float]  # far_key(far) -> TAR (fraction)
    threshold: float  # accuracy-maximising cosine threshold on all selected pairs
    n_pairs: int
    groups: dict[str, Any] | None = None  # edgeface.eval.groups.group_rates at `threshold`
    roc: tuple[np.ndarray, np.ndarray] = field(default=(np.zeros(0), np.zeros(0)), repr=False)  # (FAR, TAR)
    # Not in JSON: what callers need to re-score without re-embedding.
    far_thresholds: dict[str, float] = field(default_factory=dict)
    fold_thresholds: list[float] = field(default_factory=list)
    scores: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "acc_std": self.acc_std,
            "tar_at_far": dict(self.tar_at_far),
            "threshold": self.threshold,
            "n_pairs": self.n_pairs,
            "groups": self.groups,
        }


def _selected_pairs(pairs_file: str | os.PathLike[str], folds: Sequence[int]) -> list[Pair]:
    pairs = select_folds(read_pairs(pairs_file), tuple(folds))
    if not pairs:
        raise EdgefaceError(f"{pairs_file}: no pairs in folds {list(folds)}")
    return pairs


def _require_two_folds(pairs: Sequence[Pair]) -> None:
    if len({p.fold for p in pairs}) < 2:
        raise EdgefaceError(
            "LFW accuracy picks each fold's threshold on the other folds: select at least two folds "
            "(the test split is --folds 6-10)"
        )


def _unique_images(pairs: Sequence[Pair], images_dir: str | os.PathLike[str]) -> list[Path]:
    """Unique images in first-appearance order; every missing one is found before any work starts."""
    root = Path(images_dir)
    if not root.is_dir():
        raise EdgefaceError(f"image folder not found: {root}")
    names = list(dict.fromkeys(name for p in pairs for name in (p.left, p.right)))
    paths = [root / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EdgefaceError(f"image not found: {missing[0]}{more}; --images must be the aligned LFW folder")
    return paths


def test_images(
    pairs_file: str | os.PathLike[str], images_dir: str | os.PathLike[str], folds: Sequence[int] = TEST_FOLDS
) -> list[Path]:
    """The unique images of the selected folds (e.g. to measure cosine agreement with fp32 on them)."""
    return _unique_images(_selected_pairs(pairs_file, folds), images_dir)


test_images.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name


def report_from_scores(
    pairs: Sequence[Pair],
    scores: np.ndarray,
    groups: dict[str, str] | None = None,
    far_targets: Sequence[float] = FAR_TARGETS,
) -> VerificationReport:
    """All metrics from one score per pair (cosine similarity), without embedding anything."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != len(pairs):
        raise ValueError(f"{s.size} scores for {len(pairs)} pairs")
    labels = np.array([p.same for p in pairs], dtype=bool)
    if labels.all() or not labels.any():
        raise EdgefaceError("the selected pairs need both same-identity and different-identity pairs")
    fold_ids = np.array([p.fold for p in pairs])
    _require_two_folds(pairs)
    acc, acc_std, fold_thresholds = kfold_accuracy(s, labels, fold_ids)
    threshold = best_threshold(s, labels)
    tars: dict[str, float] = {}
    far_thresholds: dict[str, float] = {}
    for far in far_targets:
        tars[far_key(far)], far_thresholds[far_key(far)] = tar_at_far(s, labels, far)
    far_curve, tar_curve, _ = roc_curve(s, labels)
    group_report = None
    if groups is not None:
        group_report = group_rates([p.identities for p in pairs], s, labels, groups, threshold)
    return VerificationReport(
        acc=acc,
        acc_std=acc_std,
        tar_at_far=tars,
        threshold=threshold,
        n_pairs=len(pairs),
        groups=group_report,
        roc=(far_curve, tar_curve),
        far_thresholds=far_thresholds,
        fold_thresholds=fold_thresholds,
        scores=s,
        labels=labels,
    )


def evaluate_lfw(
    embedder: Embedder,
    pairs_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    folds: Sequence[int] = TEST_FOLDS,
    groups_csv: str | os.PathLike[str] | None = None,
    far_targets: Sequence[float] = FAR_TARGETS,
) -> VerificationReport:
    """Embed each unique image of the selected folds once, score every pair by cosine, report.

    All input problems (pairs file, folds, missing images, groups CSV) surface before embedding starts,
    so a typo costs a second, not a full embedding pass.
    """
    pairs = _selected_pairs(pairs_file, folds)
    _require_two_folds(pairs)
    groups = read_groups(groups_csv) if groups_csv is not None else None
    paths = _unique_images(pairs, images_dir)
    index = {p: i for i, p in enumerate(paths)}
    emb = np.asarray(embedder(paths))
    if emb.ndim != 2 or emb.shape[0] != len(paths):
        raise ValueError(f"embedder returned shape {emb.shape} for {len(paths)} images")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():  # NaN weights or a broken spec: a report of NaN scores would be a silent wrong answer
        raise EdgefaceError(
            f"the model returned NaN or infinite embeddings for {int(bad.sum())} of {len(paths)} images "
            f"(first: {paths[int(np.argmax(bad))].name}); check the weights and the spec's mean/std"
        )
    root = Path(images_dir)
    left = emb[[index[root / p.left] for p in pairs]]
    right = emb[[index[root / p.right] for p in pairs]]
    return report_from_scores(pairs, cosine_scores(left, right), groups, far_targets)


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON atomically (temp file + os.replace): a crash never leaves a half-written report."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgefaceError(f"folder for the JSON report does not exist: {path.parent}")
    return atomic_write_text(path, dumps_json(obj) + "\n")  # NaN/Infinity refused, OS errors one line
