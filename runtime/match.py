"""Cosine-similarity matching: 1:1 verification against a threshold and 1:N top-k search.

ArcFace-style models are trained with a cosine margin, so cosine similarity of L2-normalised embeddings is
the score their thresholds are calibrated in; every comparison in edgeface goes through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from edgeface.runtime.preprocess import l2_normalize

from edgeface.errors import EdgefaceError


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = l2_normalize(np.ravel(a)), l2_normalize(np.ravel(b))
    if a.shape != b.shape:
        raise EdgefaceError(f"cannot compare embeddings of size {a.size} and {b.size}")
    return float(a @ b)


@dataclass(frozen=True)
class Decision:
    score: float
    threshold: float
    match: bool


def verify(a: np.ndarray, b: np.ndarray, threshold: float | None) -> Decision:
    """Same identity iff cosine similarity >= threshold; the threshold must come from calibration."""
    if threshold is None:
        raise EdgefaceError("no verification threshold: the artifact's spec has none; pass --threshold")
    score = cosine_similarity(a, b)
    return Decision(score=score, threshold=float(threshold), match=bool(score >= threshold))


def top_k(query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k rows of an L2-normalised `gallery` most similar to `query`, best first.

    One matrix-vector product plus argpartition: O(N·D) in BLAS and O(N) selection, so 100k templates take
    milliseconds without an index structure.
    """
    if gallery.ndim != 2 or gallery.shape[1] != np.ravel(query).size:
        raise EdgefaceError(f"query of size {np.ravel(query).size} against gallery of shape {gallery.shape}")
    n = len(gallery)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = gallery @ l2_normalize(np.ravel(query))
    k = min(k, n)
    idx = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx, scores[idx]
