"""A verification threshold for the artifact, set at a target false-accept rate on calibration data.

Impostor pairs are images of different identities (an image's identity is its parent folder, as in LFW's
aligned112/<Name>/); the threshold is the cosine that at most `far` of them reach. It is computed from the
artifact's own embeddings, since a quantized model's similarity distribution shifts slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeface.errors import EdgefaceError


def impostor_scores(embeddings: np.ndarray, identities: Sequence[str]) -> np.ndarray:
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    ids = np.asarray(identities)
    iu = np.triu_indices(len(e), k=1)
    different = ids[iu[0]] != ids[iu[1]]
    return sims[iu][different]


def threshold_at_far(embeddings: np.ndarray, paths: Sequence[Path], far: float = 1e-3) -> float:
    """The smallest cosine threshold whose impostor accept rate (score >= threshold) is <= `far`."""
    scores = impostor_scores(embeddings, [Path(p).parent.name for p in paths])
    if len(scores) < int(np.ceil(1.0 / far)):
        raise EdgefaceError(
            f"calibration data give {len(scores)} impostor pairs; a threshold at FAR {far:g} needs at least "
            f"{int(np.ceil(1.0 / far))} (use more images from more identities)"
        )
    s = np.sort(scores)[::-1]
    k = int(np.floor(far * len(s)))  # at most k impostors may pass
    thr = float(np.nextafter(s[k], np.inf)) if k < len(s) else float(s[-1])
    return float(min(max(thr, -1.0), 1.0))
