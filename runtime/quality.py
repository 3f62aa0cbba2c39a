"""Face quality: is this detection worth a template or an embedding?

A recogniser's score is only as good as the face it is given: a blurred, tiny, turned or dark face gives an
embedding that lands between identities, so a gallery template made from it lowers every later score for
that person, and a video frame embedded from it adds noise to a track's evidence. The gate measures what is
cheap to measure from a detection and its five landmarks (a few hundred microseconds on a Pi), refuses
faces that fail any threshold, and gives one score in [0, 1] to rank the views of the same face.

Measurements (all on one face):

- `size`: the longer side of the detector's box in image pixels.
- `sharpness`: variance of the Laplacian of the grey face aligned to the 112x112 ArcFace template (the
  central 88x80 region, where the face is), so it is measured at one scale whatever the face size: a small
  face upscaled to 112 px is as blurred as it looks to the network. Grey levels 0-255.
- `yaw`: the nose tip's offset from the eyes' midpoint along the eye line, in inter-ocular distances
  (0 frontal, about +-0.5 at a three-quarter view); `roll`: the eye line's angle in degrees.
- `detector_score`: the detector's own confidence.
- `brightness`: mean grey level of the same aligned region (exposure).

Default thresholds come from the 60 LFW raw_sample photos (`python benchmarks/quality_calibration.py`, its
table in docs/watch.md): every photo passes except one turned face (yaw -0.80), and the same photos blurred
with a Gaussian of sigma 2.5 have a median sharpness of 12 against 189.

The score is the geometric mean of five factors, each 0..1: size / 112 px, sharpness / 100,
1 - |yaw| / 0.8 times 1 - |roll| / 45, the detector score, and 1 - |brightness - 128| / 128 (each factor
floored at 0.01, capped at 1). It ranks views of one face; the gate is the thresholds, not the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np
from edgeface.runtime.align import align_face
from edgeface.runtime.detect import Face, degenerate

from edgeface.errors import EdgefaceError

QUALITY_SIDE = 112  # px: the aligned frame every measurement is taken in (the ArcFace template's)
_CENTRE = (slice(16, 104), slice(16, 96))  # rows, cols of the face inside the aligned frame


@dataclass(frozen=True)
class QualityThresholds:
    """The gate: a face passes when every measurement is inside its bound (see the module docstring)."""

    min_face_size: float = 40.0
    min_sharpness: float = 30.0
    max_yaw: float = 0.5
    max_roll: float = 30.0
    min_detector_score: float = 0.7
    min_brightness: float = 40.0
    max_brightness: float = 220.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise EdgefaceError(f"quality threshold {f.name} must be a finite number >= 0, got {v!r}")
        if self.min_brightness > self.max_brightness:
            raise EdgefaceError(
                f"quality thresholds: min_brightness {self.min_brightness:g} > max_brightness "
                f"{self.max_brightness:g}"
            )
        if self.min_detector_score > 1:
            raise EdgefaceError(f"min_detector_score must be in [0, 1], got {self.min_detector_score:g}")


@dataclass(frozen=True)
class Quality:
    size: float
    sharpness: float
    yaw: float
    roll: float
    detector_score: float
    brightness: float
    score: float
    failures: tuple[str, ...]  # human-readable, one per failed threshold; empty when the face passes

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        return "; ".join(self.failures) if self.failures else f"quality {self.score:.2f}"

    def as_dict(self) -> dict[str, float | bool | list[str]]:
        return {
            "score": round(self.score, 4),
            "passed": self.passed,
            "size": round(self.size, 1),
            "sharpness": round(self.sharpness, 1),
            "yaw": round(self.yaw, 3),
            "roll": round(self.roll, 1),
            "detector_score": round(self.detector_score, 4),
            "brightness": round(self.brightness, 1),
            "failures": list(self.failures),
        }


def face_problem(face: Face, frame_shape: tuple[int, ...]) -> str | None:
    """Why a detection must not be used for a track (None if it may).

    First the detector's degenerate outputs (`detect.degenerate`, the one definition: non-finite or
    zero-area boxes, landmarks off the frame or collapsed); then what tracking needs on top: a box at least
    half inside the frame, every landmark inside it (the warp would otherwise fill the face with the
    border) and distinct eyes.
    """
    h, w = frame_shape[:2]
    why = degenerate(face, w, h)
    if why is not None:
        return why
    x, y, bw, bh = (float(v) for v in face.box)
    lm = np.asarray(face.landmarks, np.float64)
    if bw < 1 or bh < 1:
        return f"zero-area box ({bw:.1f}x{bh:.1f})"
    ix = max(0.0, min(x + bw, w) - max(x, 0.0))
    iy = max(0.0, min(y + bh, h) - max(y, 0.0))
    if ix * iy < 0.5 * bw * bh:
        return "box outside the frame"
    if (lm[:, 0] < 0).any() or (lm[:, 0] > w).any() or (lm[:, 1] < 0).any() or (lm[:, 1] > h).any():
        return "landmarks outside the frame"
    if np.linalg.norm(lm[1] - lm[0]) < 1.0:
        return "eyes coincide"
    return None


def usable_faces(faces: list[Face], frame_shape: tuple[int, ...]) -> list[Face]:
    """The detections `face_problem` accepts, in their order."""
    return [f for f in faces if face_problem(f, frame_shape) is None]


def pose(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw proxy, roll degrees) from the five landmarks (module docstring)."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    d = lm[1] - lm[0]
    iod = float(np.hypot(*d))
    if not iod > 0:
        return math.inf, 0.0
    u = d / iod
    yaw = float(np.dot(lm[2] - (lm[0] + lm[1]) / 2, u) / iod)
    roll = math.degrees(math.atan2(d[1], d[0]))
    return yaw, roll


def aligned_grey(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The face on the 112x112 ArcFace template, grey: the frame every pixel measurement is taken in."""
    crop = align_face(image_bgr, landmarks, (QUALITY_SIDE, QUALITY_SIDE))
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop


def assess(
    image_bgr: np.ndarray,
    face: Face,
    thresholds: QualityThresholds | None = None,
    grey: np.ndarray | None = None,
) -> Quality:
    """Measure `face` in `image_bgr` and check it against `thresholds` (defaults if None).

    `grey` may pass a precomputed `aligned_grey(image_bgr, face.landmarks)`. A degenerate detection
    (`face_problem`) fails with that reason and a zero score, without being measured.
    """
    t = thresholds or QualityThresholds()
    problem = face_problem(face, image_bgr.shape)
    if problem is not None:
        return Quality(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (f"degenerate detection: {problem}",))
    g = grey if grey is not None else aligned_grey(image_bgr, face.landmarks)
    centre = g[_CENTRE].astype(np.float32)
    sharp = float(cv2.Laplacian(centre, cv2.CV_32F).var())
    bright = float(centre.mean())
    size = float(max(face.box[2], face.box[3]))
    yaw, roll = pose(face.landmarks)
    failures = []
    if size < t.min_face_size:
        failures.append(f"face too small ({size:.0f} px < {t.min_face_size:g})")
    if sharp < t.min_sharpness:
        failures.append(f"too blurred (sharpness {sharp:.1f} < {t.min_sharpness:g})")
    if abs(yaw) > t.max_yaw:
        failures.append(f"face turned (yaw {yaw:+.2f}, limit {t.max_yaw:g})")
    if abs(roll) > t.max_roll:
        failures.append(f"head tilted (roll {roll:+.0f} deg, limit {t.max_roll:g})")
    if face.score < t.min_detector_score:
        failures.append(f"low detector score ({face.score:.2f} < {t.min_detector_score:g})")
    if bright < t.min_brightness:
        failures.append(f"too dark (brightness {bright:.0f} < {t.min_brightness:g})")
    if bright > t.max_brightness:
        failures.append(f"overexposed (brightness {bright:.0f} > {t.max_brightness:g})")
    factors = (
        size / QUALITY_SIDE,
        sharp / 100.0,
        (1 - min(abs(yaw), 0.8) / 0.8) * (1 - min(abs(roll), 45.0) / 45.0),
        face.score,
        1 - abs(bright - 128.0) / 128.0,
    )
    clipped = [min(1.0, max(0.01, f)) for f in factors]
    score = float(math.exp(sum(math.log(f) for f in clipped) / len(clipped)))
    return Quality(size, sharp, yaw, roll, float(face.score), bright, score, tuple(failures))
