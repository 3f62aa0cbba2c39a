"""Who is in front of the camera: tracks, a quality gate, and per-track identity evidence.

`Watcher.process(frame)` takes one BGR frame (from `cv2.VideoCapture`, a picamera2 array, any source) and
returns the events it caused, as JSON-ready dicts. The CLI (`edgeface watch`) is a loop around it.

Per track, embeddings are made only from views that pass the quality gate (`runtime.quality`), and only
when they add something: the first passing view, further views while the track has fewer than
`min_views`, a view whose quality score beats the track's best by `reembed_gain`, a check every
`verify_every` frames, and a check whenever the face may have changed (optical flow lost it, or its
aligned appearance changed: normalised correlation of the 28x28 aligned face below `appearance_ncc`).
A track's identity is the gallery's best match for the mean of its embeddings, accepted once the track
has `min_views` views and that score clears the threshold; until then the track is unknown (`identity`
null). Every new embedding is first compared with the track's mean: below the same threshold it is
another person (a cut in the video, a person stepping into someone's place), so the track ends
("split") and a new one starts from that view. That is what keeps one identity per track.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np
from edgeface.runtime.align import align_face
from edgeface.runtime.backends import Artifact
from edgeface.runtime.detect import Face, YuNetDetector
from edgeface.runtime.gallery import SearchIndex
from edgeface.runtime.preprocess import l2_normalize
from edgeface.runtime.quality import (
    Quality,
    QualityThresholds,
    aligned_grey,
    assess,
    face_problem,
    usable_faces,
)
from edgeface.runtime.track import Track, Tracker, TrackUpdate

from edgeface.errors import EdgefaceError

STAGES = ("detect", "track", "quality", "embed", "match")
Event = dict[str, Any]


@dataclass(frozen=True)
class WatchConfig:
    """How often to detect and embed; see the module docstring for what each one decides."""

    detect_every: int = 5
    min_views: int = 2
    reembed_gain: float = 0.05
    verify_every: int = 30
    appearance_ncc: float = 0.8
    max_misses: int = 2
    iou_threshold: float = 0.3
    cut_ncc: float = 0.5  # scene-cut detector (runtime.track); -1 turns it off
    flow: bool = True
    refine_landmarks: bool = True
    flip: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool", bool):
                continue
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                raise EdgefaceError(f"watch setting {f.name} must be an integer, got {v!r}")
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise EdgefaceError(f"watch setting {f.name} must be a finite number, got {v!r}")
        if self.detect_every < 1 or self.min_views < 1 or self.verify_every < 1 or self.max_misses < 0:
            raise EdgefaceError("watch: detect_every, min_views and verify_every >= 1, max_misses >= 0")
        if not (0 < self.iou_threshold <= 1) or self.reembed_gain < 0:
            raise EdgefaceError("watch: iou_threshold in (0, 1] and reembed_gain >= 0 required")
        if not (-1 <= self.appearance_ncc <= 1) or not (-1 <= self.cut_ncc <= 1):
            raise EdgefaceError("watch: appearance_ncc and cut_ncc must be in [-1, 1]")


@dataclass
class Evidence:
    """What a track has learned about who it is."""

    total: np.ndarray | None = None  # sum of L2-normalised embeddings
    views: int = 0
    refused: int = 0  # detections of this track the quality gate refused
    best_quality: float = 0.0
    last_embed: int = -(10**9)
    check: bool = False  # the face may have changed: embed the next passing view and compare
    identity: str | None = None
    score: float | None = None  # gallery score of the mean embedding for the best candidate
    candidate: str | None = None
    appearance: np.ndarray | None = None  # 28x28 aligned grey face of the last detection, normalised
    switches: int = 0

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.total is None else l2_normalize(self.total)


@dataclass
class StageClock:
    """Per stage: wall milliseconds (latency) and process CPU milliseconds (cost: on a shared or
    throttled machine wall time also counts waiting for a core), with the number of calls."""

    ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
            self.cpu_ms[name] = self.cpu_ms.get(name, 0.0) + (time.process_time() - c0) * 1e3
            self.calls[name] = self.calls.get(name, 0) + 1

    def summary(self, frames: int) -> dict[str, dict[str, float]]:
        n = max(frames, 1)
        return {
            k: {
                "calls": self.calls[k],
                "ms_per_call": round(self.ms[k] / self.calls[k], 3),
                "ms_per_frame": round(self.ms[k] / n, 3),
                "cpu_ms_per_frame": round(self.cpu_ms[k] / n, 3),
            }
            for k in self.ms
        }


class Watcher:
    """Frames in, events out. `gallery` is a `Gallery.matrix()` (None: track and gate only, no names).

    `threshold` defaults to the artifact's calibrated one; it decides both identity and track splits
    (without any threshold, which only an artifact without a calibrated one and no gallery allows, tracks
    are never split by appearance).
    """

    def __init__(
        self,
        artifact: Artifact,
        detector: YuNetDetector | None = None,
        gallery: SearchIndex | None = None,
        threshold: float | None = None,
        config: WatchConfig | None = None,
        quality: QualityThresholds | None = None,
    ) -> None:
        self.artifact = artifact
        self.spec = artifact.spec
        self.detector = detector or YuNetDetector(getattr(artifact, "detector_path", None))  # a pack's
        self.gallery = gallery
        self.threshold = threshold if threshold is not None else self.spec.threshold
        if self.threshold is not None and not (math.isfinite(self.threshold) and -1 <= self.threshold <= 1):
            raise EdgefaceError(
                f"threshold must be a finite cosine similarity in [-1, 1], got {self.threshold}"
            )
        if gallery is not None and self.threshold is None:
            raise EdgefaceError(
                f"the spec of {artifact.path} has no calibrated threshold; pass --threshold to identify"
            )
        if gallery is not None and gallery.matrix.shape[1] != self.spec.embedding_dim:
            raise EdgefaceError(
                f"gallery templates are {gallery.matrix.shape[1]}-d, the artifact gives "
                f"{self.spec.embedding_dim}"
            )
        self.config = config or WatchConfig()
        self.quality = quality or QualityThresholds()
        self.tracker = Tracker(
            iou_threshold=self.config.iou_threshold,
            max_misses=self.config.max_misses,
            flow=self.config.flow,
            cut_ncc=self.config.cut_ncc,
        )
        self.evidence: dict[int, Evidence] = {}
        self.clock = StageClock()
        self.frames = 0
        self.embeddings = 0
        self._t0 = 0.0
        self._last_t: float | None = None

    # --- the loop body ---------------------------------------------------------------------------------
    def process(self, frame_bgr: np.ndarray, timestamp: float | None = None) -> list[Event]:
        """One frame (BGR uint8, H x W x 3) -> the events it caused. `timestamp`: the frame's time in
        seconds (a video's position, a camera's capture time); None uses the wall clock since the first
        frame."""
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise EdgefaceError(
                f"expected a BGR frame (H, W, 3), got {getattr(frame_bgr, 'shape', type(frame_bgr))}"
            )
        if frame_bgr.dtype != np.uint8:
            raise EdgefaceError(f"expected a uint8 frame, got {frame_bgr.dtype}")
        index = self.frames
        self.frames += 1
        if timestamp is None:
            if index == 0:
                self._t0 = time.monotonic()
            timestamp = time.monotonic() - self._t0
        try:
            t: float | None = float(timestamp)
        except (TypeError, ValueError):
            raise EdgefaceError(f"timestamp must be a number of seconds, got {timestamp!r}") from None
        t = t if t is not None and math.isfinite(t) else None
        self._last_t = t
        faces = None
        if index % self.config.detect_every == 0:
            with self.clock.stage("detect"):
                faces = usable_faces(self.detector.detect(frame_bgr), frame_bgr.shape)
        with self.clock.stage("track"):
            up = self.tracker.step(frame_bgr, index, faces)
        events: list[Event] = []
        for tr in up.ended:
            events.append(self._end_event(tr, index, t))
        for tr in up.started:
            self.evidence[tr.id] = Evidence()
            events.append(self._start_event(tr, index, t))
        for tr, face in up.matched + [(tr, tr.face()) for tr in up.started]:
            events += self._observe(frame_bgr, tr, face, index, t)
        return events

    def finish(self) -> list[Event]:
        """End every open track (end of the video, or Ctrl-C); returns their `track_end` events."""
        return [self._end_event(tr, max(self.frames - 1, 0), self._last_t) for tr in self.tracker.finish()]

    # --- one detection of one track --------------------------------------------------------------------
    def _observe(self, frame: np.ndarray, tr: Track, face: Face, index: int, t: float | None) -> list[Event]:
        ev = self.evidence[tr.id]
        with self.clock.stage("quality"):
            grey = aligned_grey(frame, face.landmarks)
            q = assess(frame, face, self.quality, grey)
            look = _appearance(grey)
            if (
                ev.appearance is not None
                and float((look * ev.appearance).mean()) < self.config.appearance_ncc
            ):
                ev.check = True
            if tr.flow_lost:
                ev.check, tr.flow_lost = True, False
            ev.appearance = look
        if not q.passed:
            ev.refused += 1
            return []
        c = self.config
        want = (
            ev.views == 0
            or ev.check
            or ev.views < c.min_views
            or q.score > ev.best_quality + c.reembed_gain
            or index - ev.last_embed >= c.verify_every
        )
        if not want:
            return []
        e = self._embed(frame, face)
        mean = ev.mean
        if mean is not None and self.threshold is not None and float(mean @ e) < self.threshold:
            return self._split(frame, tr, face, e, q, index, t, float(mean @ e))
        return self._add_view(tr, ev, e, q, index, t)

    def _embed(self, frame: np.ndarray, face: Face) -> np.ndarray:
        with self.clock.stage("embed"):
            if self.config.refine_landmarks:
                refined = self.detector.refine(frame, face)
                face = refined if face_problem(refined, frame.shape) is None else face
            crop = align_face(frame, face.landmarks, self.spec.input_size, self.spec.crop_box())
            e = self.artifact.embed([crop])[0]
            if self.config.flip:
                e = e + self.artifact.embed([crop], flip=True)[0]
        self.embeddings += 1
        v = np.asarray(e, np.float32)
        if not np.isfinite(v).all() or not np.linalg.norm(v) > 0:
            raise EdgefaceError(f"{self.artifact.path} returned a non-finite or zero embedding")
        return l2_normalize(v)

    def _add_view(
        self, tr: Track, ev: Evidence, e: np.ndarray, q: Quality, index: int, t: float | None
    ) -> list[Event]:
        ev.total = e.copy() if ev.total is None else ev.total + e
        ev.views += 1
        ev.best_quality = max(ev.best_quality, q.score)
        ev.last_embed = index
        ev.check = False
        return self._decide(tr, ev, index, t)

    def _decide(self, tr: Track, ev: Evidence, index: int, t: float | None) -> list[Event]:
        if self.gallery is None or len(self.gallery.matrix) == 0 or ev.mean is None:
            return []
        with self.clock.stage("match"):
            best = self.gallery.search(ev.mean, 1)
        if not best:
            return []
        ev.candidate, ev.score = best[0].name, float(best[0].score)
        assert self.threshold is not None
        name = ev.candidate if ev.views >= self.config.min_views and ev.score >= self.threshold else None
        if name == ev.identity:
            return []
        if ev.identity is not None:
            ev.switches += 1
        ev.identity = name
        return [
            _clean(
                {
                    "event": "identity",
                    "track": tr.id,
                    "frame": index,
                    "t": t,
                    "identity": name,
                    "score": ev.score,
                    "candidate": ev.candidate,
                    "views": ev.views,
                    "threshold": self.threshold,
                }
            )
        ]

    def _split(
        self,
        frame: np.ndarray,
        tr: Track,
        face: Face,
        e: np.ndarray,
        q: Quality,
        index: int,
        t: float | None,
        similarity: float,
    ) -> list[Event]:
        """The new view is not the person the track has been: end it and start a track from this view."""
        events = []
        for old in self.tracker.end(tr, "split"):
            end = self._end_event(old, index, t)
            end["split_similarity"] = round(similarity, 4)
            events.append(end)
        new = self.tracker.start(face, index)
        ev = self.evidence[new.id] = Evidence(appearance=_appearance(aligned_grey(frame, face.landmarks)))
        events.append(self._start_event(new, index, t))
        events += self._add_view(new, ev, e, q, index, t)
        return events

    # --- events ----------------------------------------------------------------------------------------
    def _start_event(self, tr: Track, index: int, t: float | None) -> Event:
        return _clean(
            {
                "event": "track_start",
                "track": tr.id,
                "frame": index,
                "t": t,
                "box": [round(float(v), 1) for v in tr.box],
                "detector_score": tr.detector_score,
            }
        )

    def _end_event(self, tr: Track, index: int, t: float | None) -> Event:
        ev = self.evidence.pop(tr.id, Evidence())
        return _clean(
            {
                "event": "track_end",
                "track": tr.id,
                "frame": index,
                "t": t,
                "reason": tr.ended,
                "identity": ev.identity,
                "score": ev.score,
                "candidate": ev.candidate,
                "views": ev.views,
                "refused_views": ev.refused,
                "best_quality": ev.best_quality,
                "first_frame": tr.first_frame,
                "last_frame": tr.last_frame,
                "detections": tr.detections,
                "identity_switches": ev.switches,
            }
        )

    def label(self, tr: Track) -> tuple[str, float | None]:
        """What to draw on a track: its identity (or "unknown") and score."""
        ev = self.evidence.get(tr.id)
        if ev is None:
            return "unknown", None
        return (ev.identity or "unknown"), ev.score


def _appearance(grey: np.ndarray) -> np.ndarray:
    small = cv2.resize(grey, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32)
    sd = float(small.std())
    return (small - small.mean()) / sd if sd > 1e-3 else np.zeros_like(small)


def _clean(event: Event) -> Event:
    """Floats rounded and never NaN/Infinity (JSON has neither): a non-finite value becomes null."""
    out: Event = {}
    for k, v in event.items():
        if isinstance(v, float | np.floating):
            v = round(float(v), 4) if math.isfinite(v) else None
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, list):
            v = [round(float(x), 4) if math.isfinite(x) else None for x in v]
        out[k] = v
    return out


__all__ = ["Event", "StageClock", "TrackUpdate", "WatchConfig", "Watcher"]
