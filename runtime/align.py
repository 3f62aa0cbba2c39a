"""Five-point similarity alignment to the ArcFace 112x112 template.

Recognition models are trained on faces warped onto this template; any other crop (a box resize, a
different template) costs accuracy silently, so every path from landmarks to a face crop goes through
`align_face`.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgeface.errors import EdgefaceError

# Left eye, right eye, nose tip, left and right mouth corner (as seen in the image), 112x112 pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst; 2x3 matrix.

    Umeyama's closed form: deterministic and exact for five points, unlike cv2.estimateAffinePartial2D,
    whose robust estimators (RANSAC/LMEDS) may drop a landmark as an outlier.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise EdgefaceError(f"landmarks must be matching (N, 2) arrays with N >= 2, got {src.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise EdgefaceError("degenerate landmarks: all points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # forbid reflections
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def align_face(
    image_bgr: np.ndarray, landmarks: np.ndarray, size: tuple[int, int] = (112, 112)
) -> np.ndarray:
    """Warp `image_bgr` so its five landmarks land on the ArcFace template, scaled to `size` (H, W)."""
    h, w = size
    template = ARCFACE_TEMPLATE * np.array([w / 112.0, h / 112.0])
    m = similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2), template)
    return cv2.warpAffine(image_bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
