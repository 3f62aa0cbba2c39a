"""Face detection and five landmarks with YuNet through OpenCV's `cv2.FaceDetectorYN`.

YuNet is small (tens of kB of weights), runs in OpenCV's own DNN module (no extra runtime on a Pi), and
returns the same five landmarks the ArcFace template uses, in the same order. The model file is never
downloaded: it is the one in the artifact's pack (edgeface.runtime.pack), or a path the user gives, or
the repository's shared models folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeface.errors import EdgefaceError

DEFAULT_YUNET = (
    Path(__file__).resolve().parents[1].parent / "shared" / "models" / "face_detection_yunet_2026may.onnx"
)
REFINE_FACE_SIZE = 256  # px: smaller faces get their landmarks re-detected upscaled to this size
REFINE_CONTEXT = 1.5  # crop side / box side around a face being refined
MAX_SIDE = 640  # px: larger photos are detected downscaled (refine then works at full resolution)
MIN_SIDE = 64  # px: narrower inputs are padded; at <= 32 px YuNet returns uninitialised rows
MIRROR = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip: eyes and mouth corners swap
YUNET_ENV = "EDGEFACE_YUNET"  # lets an installed package (no ../shared) find the detector


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in image pixels
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose tip, left and right mouth corner
    score: float
    detected_size: float = 0.0  # face size (px) in the detector's input; < box size when downscaled

    @property
    def area(self) -> float:
        return max(self.box[2], 0.0) * max(self.box[3], 0.0)


def degenerate(face: Face, width: int, height: int) -> str | None:
    """Why `face` cannot be used (None if it can): alignment needs finite, distinct landmarks inside the
    photo; a box of zero area or entirely outside the frame is not a face in this photo."""
    box = np.asarray(face.box, np.float64)
    lm = np.asarray(face.landmarks, np.float64)
    if box.shape != (4,) or lm.shape != (5, 2):
        return "malformed detection"
    if not (np.isfinite(box).all() and np.isfinite(lm).all() and math.isfinite(face.score)):
        return "non-finite box, landmarks or score"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return "zero-area box"
    if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
        return "box outside the frame"
    cx, cy = lm.mean(0)
    if not (0 <= cx < width and 0 <= cy < height):
        return "landmarks outside the frame"
    if float(np.ptp(lm, axis=0).max()) < 1.0:
        return "landmarks collapsed to one point"
    return None


def usable(faces: list[Face], width: int, height: int) -> tuple[list[Face], list[str]]:
    """(the faces that pass `degenerate`, in order; why each of the others was dropped)."""
    kept, rejected = [], []
    for f in faces:
        why = degenerate(f, width, height)
        if why is None:
            kept.append(f)
        else:
            rejected.append(why)
    return kept, rejected


def default_detector_path() -> Path:
    env = os.environ.get(YUNET_ENV)
    return Path(env) if env else DEFAULT_YUNET


class YuNetDetector:
    """`detect(image)` -> faces sorted largest first; the input size is set per image, as YuNet needs."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        max_side: int = MAX_SIDE,
        landmarker: str | os.PathLike[str] | None = None,
    ) -> None:
        """`landmarker`: a face-mesh model file (runtime.landmarks) that `refine` uses instead of YuNet
        re-detection; default $EDGEFACE_LANDMARKER, else none."""
        from edgeface.runtime.landmarks import MeshLandmarker, default_landmarker_path

        mesh = Path(landmarker) if landmarker else default_landmarker_path()
        self.landmarker = MeshLandmarker(mesh) if mesh else None
        path = Path(model_path) if model_path else default_detector_path()
        if not path.is_file():
            raise EdgefaceError(
                f"face detector model not found: {path} (use a pack, which holds its detector, or pass "
                f"--detector PATH or set {YUNET_ENV}; nothing is downloaded)"
            )
        try:
            # Two nets: photos, and refinement crops (always one size). A net re-plans its buffers whenever
            # its input size changes, and alternating photo and crop sizes on one net cost a third of a
            # raw photo's detection time (YuNet 2026may, 250 px photos, 384 px crops).
            self._net, self._crop_net = (
                cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
                for _ in range(2)
            )
        except cv2.error as e:
            raise EdgefaceError(
                f"cannot load face detector {path}: {str(e).strip().splitlines()[-1]}"
            ) from None
        self.path = path
        self.max_side = max_side
        self._settings = (score_threshold, nms_threshold, top_k, max_side)

    def clone(self) -> YuNetDetector:
        """A detector with the same model and settings for another thread: one cv2 net must not run in
        two threads at once."""
        mesh = self.landmarker.path if self.landmarker is not None else None
        return YuNetDetector(self.path, *self._settings, landmarker=mesh)

    def detect(self, image_bgr: np.ndarray, rejected: list[str] | None = None) -> list[Face]:
        """Usable faces in `image_bgr` coordinates, largest first; why any others were dropped is appended
        to `rejected` when given.

        Photos larger than `max_side` are detected on a downscaled copy: YuNet's cost grows with the pixel
        count (a 12 MP phone photo would take seconds on a Pi) while faces worth recognising stay
        detectable at 640 px; `refine` then recovers landmark precision from the full-resolution image.
        Inputs narrower than `MIN_SIDE` are padded (bottom/right, so coordinates do not move): on them YuNet
        returns rows of uninitialised memory (infinite or 1e27 px boxes with score 1.0, depending on what
        ran before), and every row still goes through `degenerate` before it can be used.
        """
        h, w = image_bgr.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = (
            image_bgr
            if s == 1.0
            else cv2.resize(
                image_bgr,
                (max(1, round(w * s)), max(1, round(h * s))),
                interpolation=cv2.INTER_AREA,
            )
        )
        rows = self._run(small)
        faces = [
            Face(
                box=tuple(float(v) / s for v in r[:4]),  # type: ignore[arg-type]
                landmarks=np.asarray(r[4:14], np.float64).reshape(5, 2) / s,
                score=float(r[14]),
                detected_size=float(max(r[2], r[3])),
            )
            for r in rows
        ]
        kept, why = usable(faces, w, h)
        if rejected is not None:
            rejected.extend(why)
        return sorted(kept, key=lambda f: f.area, reverse=True)

    def _run(self, image_bgr: np.ndarray, net: cv2.FaceDetectorYN | None = None) -> np.ndarray:
        """YuNet's raw (N, 15) rows for one image, padded to at least MIN_SIDE px per side."""
        net = net or self._net
        h, w = image_bgr.shape[:2]
        if h < MIN_SIDE or w < MIN_SIDE:
            image_bgr = cv2.copyMakeBorder(
                image_bgr, 0, max(0, MIN_SIDE - h), 0, max(0, MIN_SIDE - w), cv2.BORDER_CONSTANT, value=0
            )
        ph, pw = image_bgr.shape[:2]
        if tuple(net.getInputSize()) != (pw, ph):
            net.setInputSize((pw, ph))
        _, rows = net.detect(image_bgr)
        return np.empty((0, 15), np.float32) if rows is None else rows

    def refine(
        self,
        image_bgr: np.ndarray,
        face: Face,
        face_size: int = REFINE_FACE_SIZE,
        context: float = REFINE_CONTEXT,
    ) -> Face:
        """Re-detect a small face on an upscaled crop around it, for more precise landmarks.

        YuNet's landmarks are coarse on small faces: on the 250x250 LFW photos (faces ~100 px) they sit a
        median 0.098 inter-ocular distances from the reference landmarks, 0.083 after re-detecting at
        `face_size` px (tests/test_runtime_align.py measures it). The crop is `context` x the box so the
        detector sees some context (2.0 gave the same error at 1.8x the pixels). Faces the detector already
        saw at `face_size` or more are returned unchanged, so the cost (one detection on a 384 px square)
        is paid only where it helps; a big face found in a downscaled photo is re-detected at that size.
        With a face-mesh `landmarker`, that model gives the landmarks instead, at every face size.
        """
        if self.landmarker is not None:
            return self.landmarker.refine(image_bgr, face)
        x, y, w, h = face.box
        size = max(w, h)
        if size <= 0 or (face.detected_size or size) >= face_size:
            return face
        scale = face_size / size  # < 1 for a large face found in a downscaled photo
        side = context * size
        x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
        m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        n = int(round(side * scale))
        crop = cv2.warpAffine(image_bgr, m, (n, n), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        # The crop and its mirror image: averaging the two estimates (the mirror's mapped back, left and
        # right swapped) cancels YuNet's left/right-asymmetric landmark errors.
        found = [
            [lm / scale + np.array([x0, y0]) for lm in self._landmarks(c)] for c in (crop, cv2.flip(crop, 1))
        ]
        found[1] = [np.c_[2 * x0 + (n - 1) / scale - lm[:, 0], lm[:, 1]][MIRROR] for lm in found[1]]
        # The same face, not a neighbour: the re-detected landmarks must stay within a quarter of the
        # inter-ocular distance of the first ones on average (refinement moves them by ~0.1 IOD).
        iod = float(np.linalg.norm(face.landmarks[0] - face.landmarks[1])) or size / 3
        same = []
        for candidates in found:
            moved = [float(np.linalg.norm(c - face.landmarks, axis=1).mean()) for c in candidates]
            if candidates and min(moved) <= 0.25 * iod:
                same.append(candidates[int(np.argmin(moved))])
        if not same:
            return face
        return Face(face.box, np.mean(same, axis=0), face.score, detected_size=face_size)

    def _landmarks(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        return [
            np.asarray(r[4:14], np.float64).reshape(5, 2)
            for r in self._run(image_bgr, self._crop_net)
            if np.isfinite(r).all()
        ]
