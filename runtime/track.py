"""Face tracks across video frames: detection every k-th frame, optical flow in between.

Running the detector on every frame is what costs (YuNet on a 640x480 frame: ~40 ms of CPU on our x86
machine against ~3 ms per frame for all the embedding, docs/watch.md). Between detections a face moves a few
pixels, so its box and landmarks are carried by pyramidal Lucas-Kanade flow of nine points (five
landmarks, four inside the box), checked forwards and backwards, on a grey copy of the frame at most
`flow_side` pixels wide: under a millisecond per face.
On a detection frame, detections are associated with the carried boxes greedily by IoU; a detection left
over starts a track, a track left over for more than `max_misses` detection rounds ends.

A scene cut (the frame's coarse structure changes at once: normalised cross-correlation of 32x24
thumbnails below `cut_ncc`) ends every track, because a box at the same place after a cut is another
shot, not the same face. A cut that keeps the background (another person stepping into the same spot)
is not visible here; `edgeface.runtime.watch` catches it from the faces themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from edgeface.runtime.detect import Face
from edgeface.runtime.quality import face_problem

from edgeface.errors import EdgefaceError

_LK = {
    "winSize": (15, 15),
    "maxLevel": 2,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
}
_THUMB = (32, 24)


@dataclass
class Track:
    """One face followed over frames. `box` (x, y, w, h) and `landmarks` are in frame pixels."""

    id: int
    box: np.ndarray
    landmarks: np.ndarray
    detector_score: float
    first_frame: int
    last_frame: int
    last_detected: int
    detections: int = 1
    misses: int = 0  # consecutive detection rounds without a matching detection
    flow_lost: bool = False  # optical flow lost the face since its last detection
    ended: str | None = None  # why it ended: "lost", "cut", "left", "split", "end"
    frames: int = 1
    detection: Face | None = None  # the detection that last placed the track (None once carried by flow)

    @property
    def visible(self) -> bool:
        """Matched at the last detection round: a track the detector missed is kept for re-association
        but not shown (its carried box may have drifted off the face)."""
        return self.misses == 0

    def face(self) -> Face:
        """The latest detection, or the track's carried box and landmarks as a Face."""
        return self.detection if self.detection is not None else self.carried()

    def carried(self) -> Face:
        """The track's current box and landmarks (carried by flow since the last detection) as a Face."""
        return Face(tuple(float(v) for v in self.box), self.landmarks.copy(), self.detector_score)  # type: ignore[arg-type]


@dataclass
class TrackUpdate:
    """What one frame did to the tracks."""

    started: list[Track] = field(default_factory=list)
    matched: list[tuple[Track, Face]] = field(default_factory=list)  # detections given to existing tracks
    ended: list[Track] = field(default_factory=list)
    cut: bool = False
    detected: bool = False


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


class Tracker:
    """Feed every frame to `step`; pass the frame's detections on detection frames, None otherwise."""

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_misses: int = 2,
        flow: bool = True,
        flow_side: int = 320,
        cut_ncc: float = 0.5,
    ) -> None:
        if not (0 < iou_threshold <= 1):
            raise EdgefaceError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_misses < 0 or flow_side < 32 or not (-1 <= cut_ncc <= 1):
            raise EdgefaceError("tracker: max_misses >= 0, flow_side >= 32 and cut_ncc in [-1, 1] required")
        self.iou_threshold = iou_threshold
        self.max_misses = max_misses
        self.flow = flow
        self.flow_side = flow_side
        self.cut_ncc = cut_ncc
        self.tracks: list[Track] = []
        self._next_id = 1
        self.started = 0  # tracks ever started
        self._prev: np.ndarray | None = None  # previous small grey frame
        self._prev_thumb: np.ndarray | None = None

    # --- per frame -------------------------------------------------------------------------------------
    def step(self, frame_bgr: np.ndarray, index: int, faces: list[Face] | None = None) -> TrackUpdate:
        up = TrackUpdate(detected=faces is not None)
        h, w = frame_bgr.shape[:2]
        s = min(1.0, self.flow_side / max(h, w))
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
        small = grey if s == 1.0 else cv2.resize(grey, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        thumb = cv2.resize(small, _THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)
        if self._prev_thumb is not None and self.tracks and _ncc(self._prev_thumb, thumb) < self.cut_ncc:
            up.cut = True
            up.ended += self._end_all("cut")
        # a detection frame places its tracks anew: one frame of motion does not spoil the IoU matching
        if faces is None and self.flow and self._prev is not None and self._prev.shape == small.shape:
            if self.tracks:
                self._carry(self._prev, small, s)
        for t in self.tracks:
            t.last_frame = index
            t.frames += 1
        for t in [t for t in self.tracks if face_problem(t.carried(), frame_bgr.shape) is not None]:
            up.ended += self._end(t, "left")  # carried out of the frame (or to a degenerate box)
        if faces is not None:
            self._associate([f for f in faces if face_problem(f, frame_bgr.shape) is None], index, up)
        self._prev, self._prev_thumb = small, thumb
        return up

    def _associate(self, faces: list[Face], index: int, up: TrackUpdate) -> None:
        pairs = sorted(
            (
                (iou(t.box, np.asarray(f.box, np.float64)), ti, fi)
                for ti, t in enumerate(self.tracks)
                for fi, f in enumerate(faces)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_f: set[int] = set()
        for score, ti, fi in pairs:
            if score < self.iou_threshold:
                break
            if ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            t, f = self.tracks[ti], faces[fi]
            t.box = np.asarray(f.box, np.float64)
            t.landmarks = np.asarray(f.landmarks, np.float64).copy()
            t.detector_score = float(f.score)
            t.last_detected = index
            t.detections += 1
            t.misses = 0
            t.detection = f
            up.matched.append((t, f))
        for ti, t in enumerate(list(self.tracks)):
            if ti in used_t:
                continue
            t.misses += 1
            if t.misses > self.max_misses:
                up.ended += self._end(t, "lost")
        for fi, f in enumerate(faces):
            if fi not in used_f:
                up.started.append(self.start(f, index))

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self, face: Face, index: int) -> Track:
        t = Track(
            id=self._next_id,
            box=np.asarray(face.box, np.float64),
            landmarks=np.asarray(face.landmarks, np.float64).copy(),
            detector_score=float(face.score),
            first_frame=index,
            last_frame=index,
            last_detected=index,
            detection=face,
        )
        self._next_id += 1
        self.started += 1
        self.tracks.append(t)
        return t

    def _end(self, track: Track, reason: str) -> list[Track]:
        if track in self.tracks:
            self.tracks.remove(track)
            track.ended = reason
            return [track]
        return []

    def end(self, track: Track, reason: str) -> list[Track]:
        """End `track` now (a caller's decision, e.g. the faces inside it turned out to be two people)."""
        return self._end(track, reason)

    def _end_all(self, reason: str) -> list[Track]:
        ended = list(self.tracks)
        for t in ended:
            t.ended = reason
        self.tracks = []
        return ended

    def finish(self) -> list[Track]:
        """End every open track (the stream is over)."""
        return self._end_all("end")

    # --- optical flow ----------------------------------------------------------------------------------
    def _carry(self, prev: np.ndarray, cur: np.ndarray, s: float) -> None:
        """Move every track's box and landmarks by the flow of its points from `prev` to `cur`."""
        pts = np.concatenate([_points(t) for t in self.tracks]).astype(np.float32) * s
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts.reshape(-1, 1, 2), None, **_LK)
        p0r, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **_LK)
        p1, p0r = p1.reshape(-1, 2), p0r.reshape(-1, 2)
        fb = np.linalg.norm(pts - p0r, axis=1)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < 1.0) & np.isfinite(p1).all(axis=1)
        for i, t in enumerate(self.tracks):
            sl = slice(9 * i, 9 * i + 9)
            g = good[sl]
            if g.sum() < 4:
                t.flow_lost = True
                continue
            a, b = pts[sl][g] / s, p1[sl][g] / s
            ca, cb = _median(a), _median(b)
            da, db = np.linalg.norm(a - ca, axis=1), np.linalg.norm(b - cb, axis=1)
            ok = da > 1e-3
            scale = float(_median(db[ok] / da[ok])) if ok.any() else 1.0
            if not (math.isfinite(scale) and 0.5 < scale < 2.0):
                t.flow_lost = True
                continue
            t.detection = None
            t.landmarks = (t.landmarks - ca) * scale + cb
            x, y, w, h = t.box
            centre = (np.array([x + w / 2, y + h / 2]) - ca) * scale + cb
            t.box = np.array([centre[0] - w * scale / 2, centre[1] - h * scale / 2, w * scale, h * scale])


def _points(t: Track) -> np.ndarray:
    """Five landmarks and four points inside the box (they keep the flow alive when landmarks blur)."""
    x, y, w, h = t.box
    inner = np.array(
        [[x + w * fx, y + h * fy] for fx, fy in ((0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7))]
    )
    return np.concatenate([t.landmarks, inner])


def _median(x: np.ndarray) -> np.ndarray:
    """Median along axis 0 by sorting: np.median's overhead is larger than the work on nine points."""
    x = np.sort(x, axis=0)
    n = len(x)
    return (x[(n - 1) // 2] + x[n // 2]) / 2


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two thumbnails; 1.0 when either is flat (a dark or blank frame is
    not a cut by itself: nothing says the scene changed)."""
    sa, sb = float(a.std()), float(b.std())
    if sa < 2.0 or sb < 2.0:
        return 1.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))
