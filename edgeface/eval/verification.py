"""1:1 verification metrics on cosine scores: LFW k-fold accuracy, TAR@FAR and the ROC curve.

numpy only, so the same numbers can be computed from a PyTorch model, an ONNX/TFLite artifact or a phone's
dump of embeddings. Conventions used everywhere in edgeface:

- a pair is *accepted* (predicted "same person") when `score >= threshold`;
- accuracies and rates are fractions (0.9937), never percentages; the CLI prints percent;
- `labels` are booleans, True for genuine (same-identity) pairs.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def _as_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    if s.size == 0:
        raise ValueError("no scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return s, y


def cosine_scores(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays; a zero vector scores 0 with anything."""
    a = np.asarray(left, dtype=np.float64)
    b = np.asarray(right, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of the same shape, got {a.shape} and {b.shape}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), EPS)
    return np.einsum("nd,nd->n", a, b)


def cosine_agreement(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """How closely `test` embeddings of the same images follow `reference` (e.g. int8 vs fp32).

    Cosine, not L2, because verification only ever looks at directions; the minimum matters because one
    broken image (an overflowing activation) hides inside a good mean.
    """
    c = cosine_scores(reference, test)
    if c.size == 0:
        raise ValueError("no embeddings to compare")
    return {"mean": float(c.mean()), "min": float(c.min())}


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises accuracy on these pairs.

    Every distinct cut of the sorted scores is tried (exact, no grid). The threshold is placed midway
    between the two scores either side of the cut, so it does not sit on a training score and a held-out
    score equal to a training score is classified like it. When several cuts reach the same accuracy the
    lowest threshold wins (deterministic; matches argmax-first over an increasing grid).
    """
    s, y = _as_scores_labels(scores, labels)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    n = s.size
    # Cut k: reject the k lowest scores, accept the rest (k = 0..n).
    neg_below = np.concatenate([[0], np.cumsum(~y_sorted)])  # negatives among the k lowest
    pos_total = int(y_sorted.sum())
    pos_below = np.concatenate([[0], np.cumsum(y_sorted)])
    correct = neg_below + (pos_total - pos_below)
    # A cut between two equal scores is not realisable by any threshold.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s_sorted[1:] > s_sorted[:-1]
    correct = np.where(valid, correct, -1)
    k = int(np.argmax(correct))
    if k == 0:
        return float(s_sorted[0] - 1e-6)
    if k == n:
        return float(s_sorted[-1] + 1e-6)
    return float((s_sorted[k - 1] + s_sorted[k]) / 2)


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    s, y = _as_scores_labels(scores, labels)
    return float(np.mean((s >= threshold) == y))


def kfold_accuracy(
    scores: np.ndarray, labels: np.ndarray, folds: np.ndarray
) -> tuple[float, float, list[float]]:
    """LFW protocol: each fold is scored at the threshold that is best on all the *other* folds.

    `folds` gives each pair's fold id. Returns (mean accuracy, std over folds (population, ddof=0, as in
    the usual LFW tables), threshold used for each fold in increasing fold-id order). Needs at least two
    folds: with one there is no held-out data to pick a threshold on.
    """
    s, y = _as_scores_labels(scores, labels)
    f = np.asarray(folds).reshape(-1)
    if f.shape != s.shape:
        raise ValueError(f"folds {f.shape} and scores {s.shape} differ in length")
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accs: list[float] = []
    thresholds: list[float] = []
    for fold in ids:
        held = f == fold
        t = best_threshold(s[~held], y[~held])
        thresholds.append(t)
        accs.append(float(np.mean((s[held] >= t) == y[held])))
    return float(np.mean(accs)), float(np.std(accs)), thresholds


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the smallest threshold whose false accept rate over impostor pairs is <= far.

    With m impostor pairs at most k = floor(far * m) may be accepted, so the threshold is placed just
    above (np.nextafter) the (k+1)-th highest impostor score. Ties: impostors with equal scores are
    accepted or rejected together, so when the (k+1)-th score is tied with higher ones the achieved FAR is
    below the target, never above it. If far * m < 1 no impostor may pass: the threshold sits just above
    the highest impostor score.
    """
    s, y = _as_scores_labels(scores, labels)
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    if neg.size == 0 or pos.size == 0:
        raise ValueError("TAR@FAR needs both genuine and impostor pairs")
    if 0.0 < far < 1.0:  # the one FMR-threshold rule (edgeface.eval.rates)
        from edgeface.eval.rates import threshold_at_fmr

        threshold = threshold_at_fmr(neg, far).threshold
    else:
        threshold = float(np.min(s)) if far >= 1.0 else float(np.nextafter(neg[0], np.inf))
    return float(np.mean(pos >= threshold)), threshold


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, thresholds), one point per distinct score, from (0, 0) at +inf to (1, 1).

    Point i is what accepting `score >= thresholds[i]` gives; FAR and TAR are non-decreasing.
    """
    s, y = _as_scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both genuine and impostor pairs")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    tp = np.cumsum(y_desc)
    fp = np.cumsum(~y_desc)
    last_of_tie = np.r_[s_desc[1:] < s_desc[:-1], True]  # keep one point per distinct score
    far = np.r_[0.0, fp[last_of_tie] / n_neg]
    tar = np.r_[0.0, tp[last_of_tie] / n_pos]
    thresholds = np.r_[np.inf, s_desc[last_of_tie]]
    return far, tar, thresholds
