"""Five-point similarity alignment to the ArcFace 112x112 template.

Recognition models are trained on faces warped onto this template; any other crop (a box resize, a
different template) costs accuracy silently, so every path from landmarks to a face crop goes through
`align_face`.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.spec import ALIGNED_SIDE, ModelSpec

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
    image_bgr: np.ndarray,
    landmarks: np.ndarray,
    size: tuple[int, int] = (112, 112),
    crop: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Warp `image_bgr` so its five landmarks land on the ArcFace template, as the network's input.

    `size` is the network's (H, W); `crop` is the region [x, y, w, h] of the 112x112 template frame the
    network sees (ModelSpec.crop_box()). The map is a similarity, so a 112x96 network gets the central 96
    columns of the aligned face at full scale rather than the whole face squeezed to 96 pixels.
    """
    h, w = size
    x0, y0, cw, ch = crop if crop is not None else ModelSpec(name="_", input_size=(h, w)).crop_box()
    scale = w / cw
    if abs(h / ch - scale) > 0.01 * scale:
        raise EdgefaceError(f"face crop {cw:g}x{ch:g} does not have the aspect ratio of the input {h}x{w}")
    template = (ARCFACE_TEMPLATE - np.array([x0, y0])) * scale
    m = similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2), template)
    return cv2.warpAffine(image_bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def crop_aligned(face_bgr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """An already-aligned face -> the network's input crop, never resized to another aspect ratio.

    - The network's own size: taken as it is (what `align_face` returns).
    - A square face: an ArcFace-aligned face at any resolution (LFW's aligned112, a 224x224 crop); the
      spec's crop region is cut from it, then resized uniformly.
    - Anything else (a tight crop of other proportions): the centred region with the network's aspect
      ratio, resized uniformly. Squeezing a face to another aspect ratio costs accuracy silently
      (0.27 pp of LFW on a 112x96 model), so it never happens.
    """
    h, w = spec.input_size
    fh, fw = face_bgr.shape[:2]
    if (fh, fw) == (h, w):
        return face_bgr
    if fh == fw:
        k = fh / ALIGNED_SIDE
        x0, y0, cw, ch = (v * k for v in spec.crop_box())
    else:
        cw, ch = (fw, fw * h / w) if fw * h <= fh * w else (fh * w / h, fh)
        x0, y0 = (fw - cw) / 2, (fh - ch) / 2
    ix, iy, iw, ih = (round(v) for v in (x0, y0, cw, ch))
    inside = ix >= 0 and iy >= 0 and ix + iw <= fw and iy + ih <= fh
    if inside and np.allclose((ix, iy, iw, ih), (x0, y0, cw, ch), atol=1e-6):
        region = face_bgr[iy : iy + ih, ix : ix + iw]
        if region.shape[:2] == (h, w):
            return region
        shrink = region.shape[0] > h
        return cv2.resize(region, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    # pixel centres map to pixel centres (as cv2.resize does); edges replicate, as resize clamps
    sx = w / cw
    m = np.array([[sx, 0.0, sx * (0.5 - x0) - 0.5], [0.0, sx, sx * (0.5 - y0) - 0.5]])
    return cv2.warpAffine(face_bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
