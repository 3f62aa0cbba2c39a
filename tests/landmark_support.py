"""Face-mesh landmark models for tests: real TFLite files (made with litert-torch) with the signature of
MediaPipe's face_landmark.tflite, whose points do not depend on the image (geometry is what is tested)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgeface.runtime.align import ARCFACE_TEMPLATE
from edgeface.runtime.landmarks import FACE_FRACTION, LEFT_EYE, MESH_POINTS, MOUTH, NOSE_TIP, RIGHT_EYE

SIDE = 192
SHIFT = np.array([2.0, 3.0])  # the fake model's error, in crop pixels


def mesh_points(shift: np.ndarray) -> np.ndarray:
    """468 points: the five named vertices at the ArcFace template's place in the crop, plus `shift`."""
    s = SIDE * FACE_FRACTION / 112.0
    t = ARCFACE_TEMPLATE * s + (SIDE - 112.0 * s) / 2 + shift
    p = np.zeros((MESH_POINTS, 3), np.float32)
    p[:, :2] = SIDE / 2
    for i, idx in enumerate((LEFT_EYE, RIGHT_EYE, (NOSE_TIP,), (MOUTH[0],), (MOUTH[1],))):
        p[list(idx), :2] = t[i]
    return p


def fake_mesh_model(
    path: Path, logit: float, input_shape: tuple[int, ...] = (1, SIDE, SIDE, 3), shift: np.ndarray = SHIFT
) -> Path:
    """A real TFLite file with the face-mesh model's signature: NHWC float image -> (1, 1, 1, 1404) points
    and a (1, 1, 1, 1) face logit. Its points do not depend on the image (geometry is what is tested)."""
    import litert_torch
    import torch

    points = torch.from_numpy(mesh_points(shift).reshape(1, 1, 1, -1))

    class FakeMesh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            zero = x.mean() * 0.0  # keeps the input in the graph
            return points + zero, torch.full((1, 1, 1, 1), logit) + zero

    litert_torch.convert(FakeMesh().eval(), (torch.zeros(input_shape),)).export(str(path))
    return path
