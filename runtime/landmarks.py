"""Five landmarks from a dense face-mesh model, for alignment more precise than the detector's own.

YuNet's landmarks sit a median 0.073 inter-ocular distances (IOD) from LFW's reference landmarks even
after re-detection on an upscaled crop, and recognition networks are sensitive to that (the raw-photo false
rejects that pre-aligned crops do not have, docs/face_selection.md). MediaPipe's Face Mesh landmark model
(`face_landmark.tflite`: 192x192 RGB in [0, 1] -> 468 points and a face logit; Apache-2.0, shipped inside
the `mediapipe` 0.10.x wheels, never downloaded here) regresses a whole face surface, and its eye corners,
nose tip and mouth corners give five points 0.058 IOD from the reference on the same photos
(`python benchmarks/face_selection.py --landmarker FILE`). It also replaces two YuNet runs on an upscaled
crop (about 50 ms on a 250 px photo here) with one small network run on each of two 192 px crops.

The crop is cut from the detector's landmarks by a similarity (upright, fixed scale), the face at 75 % of
the crop's width, as the model was trained on face-centred crops; the model runs on it and on its mirror
image, and the two estimates are averaged (the mirror's with left and right swapped), which cancels its
left/right-asymmetric errors as for YuNet. The user passes the file (`--landmarker`, or
$EDGEFACE_LANDMARKER); it is validated as data: one float input of N x N x 3, an output of 468 x 3 values.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import ARCFACE_TEMPLATE, similarity_transform
from edgeface.runtime.detect import MIRROR, Face

from edgeface.errors import EdgefaceError
from edgeface.io import printable

LANDMARKER_ENV = "EDGEFACE_LANDMARKER"
MESH_POINTS = 468
FACE_FRACTION = 0.75  # the ArcFace 112 px frame spans this fraction of the model's input
# Face Mesh vertex indices (the canonical face model's numbering): eye corners, nose tip, mouth corners,
# as seen in the image (the subject's right eye is on the image's left)
LEFT_EYE = (33, 133)
RIGHT_EYE = (263, 362)
NOSE_TIP = 1
MOUTH = (61, 291)
MAX_MOVE_IOD = 0.25  # a result further than this from the detector's landmarks is another face or a miss


def default_landmarker_path() -> Path | None:
    env = os.environ.get(LANDMARKER_ENV)
    return Path(env) if env else None


class MeshLandmarker:
    """`refine(image, face)` -> the face with landmarks from the mesh model (or unchanged, when the model
    finds no face where the detector did). One interpreter: one instance per thread (`clone`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from edgeface.runtime.backends import _tflite_interpreter

        self.path = Path(path)
        shown = printable(self.path)
        if not self.path.is_file():
            raise EdgefaceError(f"landmark model not found: {shown}")
        interpreter, _ = _tflite_interpreter()
        try:
            self._it = interpreter(model_path=str(self.path), num_threads=1)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgefaceError(f"cannot load landmark model {shown}: {reason}") from None
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        shape = [int(v) for v in ins[0]["shape"]] if len(ins) == 1 else []
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2] or shape[1] < 32:
            raise EdgefaceError(
                f"{shown} is not a face-mesh landmark model: it needs one 1 x N x N x 3 input, has "
                f"{[list(map(int, d['shape'])) for d in ins]}"
            )
        if ins[0]["dtype"] != np.float32:
            raise EdgefaceError(f"{shown}: the landmark model's input must be float32, not {ins[0]['dtype']}")
        mesh = [d for d in outs if int(np.prod(d["shape"])) == MESH_POINTS * 3]
        if not mesh:
            raise EdgefaceError(
                f"{shown} is not a face-mesh landmark model: no output holds {MESH_POINTS} x 3 values"
            )
        flags = [d for d in outs if int(np.prod(d["shape"])) == 1]
        self.side = shape[1]
        self._in = ins[0]["index"]
        self._mesh = mesh[0]["index"]
        self._flag = flags[0]["index"] if flags else None

    def clone(self) -> MeshLandmarker:
        return MeshLandmarker(self.path)

    def _five(self, crop_bgr: np.ndarray) -> np.ndarray | None:
        """Five points in crop pixels, or None when the face logit says there is no face."""
        x = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)[None] / 255.0
        self._it.set_tensor(self._in, x)
        self._it.invoke()
        if self._flag is not None and not float(self._it.get_tensor(self._flag).ravel()[0]) > 0.0:
            return None
        p = self._it.get_tensor(self._mesh).reshape(MESH_POINTS, 3)[:, :2].astype(np.float64)
        if not np.isfinite(p).all():
            return None
        five = [p[list(LEFT_EYE)].mean(0), p[list(RIGHT_EYE)].mean(0), p[NOSE_TIP], p[MOUTH[0]], p[MOUTH[1]]]
        return np.stack(five)

    def refine(self, image_bgr: np.ndarray, face: Face) -> Face:
        n = self.side
        s = n * FACE_FRACTION / 112.0
        try:
            m = similarity_transform(face.landmarks, ARCFACE_TEMPLATE * s + (n - 112.0 * s) / 2)
        except EdgefaceError:  # coinciding landmarks: nothing to cut a crop from, alignment will say so
            return face
        crop = cv2.warpAffine(image_bgr, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        found = []
        direct = self._five(crop)
        if direct is not None:
            found.append(direct)
        mirrored = self._five(cv2.flip(crop, 1))
        if mirrored is not None:
            found.append(np.c_[n - 1 - mirrored[:, 0], mirrored[:, 1]][MIRROR])
        if not found:
            return face
        inv = cv2.invertAffineTransform(m)
        lm = np.mean(found, axis=0) @ inv[:, :2].T + inv[:, 2]
        iod = float(np.linalg.norm(face.landmarks[0] - face.landmarks[1])) or max(face.box[2:]) / 3
        if float(np.linalg.norm(lm - face.landmarks, axis=1).mean()) > MAX_MOVE_IOD * iod:
            return face
        return Face(face.box, lm, face.score, face.detected_size)
