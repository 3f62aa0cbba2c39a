"""Which detected face is the subject (`--face`), and which detections are unusable.

"The largest face" is a coin flip in photos of people in a crowd: on raw LFW photos of the test identities
the largest face was another person in 28 of 808 multi-face photos, 22 of them bystanders cut by the photo
border, and those 28 photos caused half of the false rejects (issue 15). "The face nearest the centre"
fixes photos framed on their subject but not a camera frame whose one dominant face sits off-centre. The
default, `auto`, weighs both, plus the detector's confidence and how much of the face is out of frame:

    auto score = detector score x (area / largest area) x (1 - d)^CENTRE_POWER x visible^VISIBLE_POWER

- area: of the face's *extent*, the union of the detector's box and the box its landmarks imply (YuNet
  extrapolates landmarks past the border, so a cut face keeps its full size here instead of shrinking);
- d: distance from the extent's centre to the frame centre, in half-frame units per axis, divided by
  sqrt(2), so 0 at the centre and 1 in a corner, for any aspect ratio;
- visible: the fraction of the extent inside the frame; a face a third out of frame keeps 0.67^4 = 20 %
  of its score, so a face cut by the border wins only over a much smaller or much less central one.

docs/runtime.md ("Face selection") has the measurements behind the powers.

Degenerate detections never reach a policy: `YuNetDetector.detect` drops them (`detect.degenerate`).
"""

from __future__ import annotations

import math

import numpy as np
from edgeface.runtime.detect import Face

from edgeface.errors import EdgefaceError

POLICIES = ("auto", "largest", "center", "highest-score", "all")
DEFAULT_POLICY = "auto"
CENTRE_POWER = 1.0
VISIBLE_POWER = 4.0
# The box YuNet draws around a whole frontal face, in units of its landmarks (medians over the 76 faces
# of ../shared raw_sample that do not touch the border): 2.16 inter-ocular distances wide, 2.81 eye-to-
# mouth distances tall, centred 0.15 eye-to-mouth distances above the landmarks' centroid.
WIDTH_PER_IOD = 2.16
HEIGHT_PER_EYE_MOUTH = 2.81
CENTRE_ABOVE_CENTROID = 0.15


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise EdgefaceError(f"unknown face policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


def extent(face: Face) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of the whole face: the detector's box united with the box its landmarks imply."""
    x, y, w, h = face.box
    lm = np.asarray(face.landmarks, np.float64)
    iod = float(np.linalg.norm(lm[0] - lm[1]))
    eye_mouth = float(np.linalg.norm((lm[0] + lm[1]) / 2 - (lm[3] + lm[4]) / 2))
    cx, cy = lm.mean(0)
    cy -= CENTRE_ABOVE_CENTROID * eye_mouth
    half_w, half_h = WIDTH_PER_IOD * iod / 2, HEIGHT_PER_EYE_MOUTH * eye_mouth / 2
    return (
        min(x, cx - half_w),
        min(y, cy - half_h),
        max(x + w, cx + half_w),
        max(y + h, cy + half_h),
    )


def visible_fraction(face: Face, width: int, height: int) -> float:
    x0, y0, x1, y1 = extent(face)
    inside = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
    return inside / max((x1 - x0) * (y1 - y0), 1e-9)


def centre_distance(cx: float, cy: float, width: int, height: int) -> float:
    """0 at the frame centre, 1 in a corner (per-axis half-frame units, / sqrt(2)); > 1 outside."""
    return math.hypot((cx - width / 2) / (width / 2), (cy - height / 2) / (height / 2)) / math.sqrt(2)


def auto_scores(faces: list[Face], width: int, height: int) -> list[float]:
    """The `auto` score of each face (module docstring); comparable only within one photo."""
    ext = [extent(f) for f in faces]
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in ext]
    largest = max(areas)
    scores = []
    for f, (x0, y0, x1, y1), area in zip(faces, ext, areas, strict=True):
        d = min(1.0, centre_distance((x0 + x1) / 2, (y0 + y1) / 2, width, height))
        scores.append(
            f.score
            * (area / largest)
            * (1.0 - d) ** CENTRE_POWER
            * visible_fraction(f, width, height) ** VISIBLE_POWER
        )
    return scores


def rank(faces: list[Face], policy: str, width: int, height: int) -> list[Face]:
    """`faces` best first by `policy` (`all` ranks as `auto`); ties keep the detector's order."""
    check_policy(policy)
    if not faces:
        return []
    if policy == "largest":
        key = [-f.area for f in faces]
    elif policy == "center":
        key = [
            centre_distance(f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2, width, height) for f in faces
        ]
    elif policy == "highest-score":
        key = [-f.score for f in faces]
    else:
        key = [-s for s in auto_scores(faces, width, height)]
    order = sorted(range(len(faces)), key=lambda i: key[i])
    return [faces[i] for i in order]


def select(faces: list[Face], policy: str, width: int, height: int) -> list[Face]:
    """The face(s) `policy` takes: one face, or every face best first for `all`."""
    ranked = rank(faces, policy, width, height)
    return ranked if policy == "all" else ranked[:1]
