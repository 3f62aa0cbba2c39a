"""Image decoding and spec-driven normalisation, written once.

Evaluation, the exporters' parity checks, calibration and the on-device pipeline all call these functions,
so what is measured is what ships. numpy + OpenCV only (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import crop_aligned

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec, TensorQuant


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to BGR uint8 (H, W, 3); a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise EdgefaceError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise EdgefaceError(f"cannot decode image (corrupt or not an image): {path}")
    return image


def arrange(faces_bgr: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, flip: bool = False) -> np.ndarray:
    """Aligned BGR uint8 faces -> uint8 (N, H, W, 3) at the spec's size and channel order, mirrored if asked.

    Faces that are not `spec.input_size` are cut and resized by `align.crop_aligned` (the spec's face
    crop, aspect ratio kept), which is right for already-aligned crops; raw photos go through alignment.
    """
    batch = []
    for face in faces_bgr if isinstance(faces_bgr, Sequence) else list(faces_bgr):
        if face.ndim != 3 or face.shape[2] != 3:
            raise EdgefaceError(f"expected a colour image (H, W, 3), got shape {face.shape}")
        face = crop_aligned(face, spec)
        # OpenCV's SIMD copies, not numpy's strided ones: this runs before every inference on the device
        if flip:
            face = cv2.flip(face, 1)
        if spec.channel_order == "RGB":
            face = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
        batch.append(np.ascontiguousarray(face, dtype=np.uint8))
    return batch[0][None] if len(batch) == 1 else np.stack(batch)  # N, H, W, C


def input_table(spec: ModelSpec, quant: TensorQuant | None = None) -> np.ndarray:
    """(256, 1, 3) lookup table: pixel value -> network input, per channel (in the spec's channel order).

    Pixels are 8-bit, so the spec's scaling (x / 255 - mean) / std, and for a quantized input the
    quantization after it, is a per-channel function of 256 values: a table computed once replaces float
    arithmetic over every pixel (cv2.LUT applies it), and the table is the one place mean and std are used.
    """
    ramp = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
    table = (ramp / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if quant is not None:
        table = quant.quantize(table)
    return np.ascontiguousarray(table.reshape(256, 1, 3))


def apply_table(
    faces_bgr: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, table: np.ndarray, flip: bool = False
) -> np.ndarray:
    """Aligned BGR uint8 faces -> network input (the table's dtype) in the spec's layout."""
    x = arrange(faces_bgr, spec, flip)
    n, h, w, _ = x.shape
    y = cv2.LUT(x.reshape(n * h, w, 3), table).reshape(n, h, w, 3)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if spec.layout == "NCHW" else y


def normalize(
    faces_bgr: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, flip: bool = False
) -> np.ndarray:
    """Aligned BGR uint8 faces -> float32 network input in the spec's layout, channel order and scaling."""
    return apply_table(faces_bgr, spec, input_table(spec), flip)


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), eps)
