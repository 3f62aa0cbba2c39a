"""The on-device pipeline: decode -> detect -> align -> embed -> match, each stage timed.

One object holds the loaded artifact and detector so a device pays their start-up once; every CLI verb
(verify, enroll, identify, profile) goes through `Pipeline.embed_image`, so what is profiled is what runs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import align_face
from edgeface.runtime.backends import Artifact
from edgeface.runtime.detect import Face, YuNetDetector
from edgeface.runtime.match import Decision, verify
from edgeface.runtime.preprocess import read_image

from edgeface.errors import EdgefaceError

STAGES = ("decode", "detect", "align", "embed", "match")


def _stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


@dataclass
class Timings:
    """Milliseconds per stage; accumulates when a stage runs more than once (two images of a verify)."""

    ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3


@dataclass(frozen=True)
class FaceEmbedding:
    path: Path
    embedding: np.ndarray  # (D,) float32, not normalised
    face: Face
    faces_found: int


class Pipeline:
    """`strict_single_face`: several faces in one photo is an error rather than "take the largest".

    `refine_landmarks` re-detects small faces upscaled for better landmarks (YuNetDetector.refine); it
    counts in the detect stage.

    `flip` adds the mirrored face's embedding (test-time augmentation, twice the embed cost); it must match
    how the artifact's threshold was calibrated.
    """

    def __init__(
        self,
        artifact: Artifact,
        detector: YuNetDetector | None = None,
        detector_path: str | os.PathLike[str] | None = None,
        strict_single_face: bool = False,
        flip: bool = False,
        refine_landmarks: bool = True,
        warn: Callable[[str], None] = _stderr,
    ) -> None:
        self.artifact = artifact
        if artifact.num_threads:  # one thread budget for the whole pipeline, detector included
            cv2.setNumThreads(artifact.num_threads)
        self.spec = artifact.spec
        self.detector = detector or YuNetDetector(detector_path)
        self.strict_single_face = strict_single_face
        self.flip = flip
        self.refine_landmarks = refine_landmarks
        self.warn = warn

    def find_face(self, image: np.ndarray, source: Path | str) -> tuple[Face, int]:
        faces = self.detector.detect(image)
        if not faces:
            raise EdgefaceError(f"no face found in {source}")
        if len(faces) > 1:
            if self.strict_single_face:
                raise EdgefaceError(
                    f"{len(faces)} faces found in {source}; --strict-single-face accepts exactly one"
                )
            self.warn(f"{len(faces)} faces found in {source}; using the largest")
        face = self.detector.refine(image, faces[0]) if self.refine_landmarks else faces[0]
        return face, len(faces)

    def embed_image(self, path: str | os.PathLike[str], timings: Timings | None = None) -> FaceEmbedding:
        t = timings if timings is not None else Timings()
        path = Path(path)
        with t.stage("decode"):
            image = read_image(path)
        with t.stage("detect"):
            face, n = self.find_face(image, path)
        with t.stage("align"):
            crop = align_face(image, face.landmarks, self.spec.input_size, self.spec.crop_box())
        with t.stage("embed"):
            e = self.artifact.embed([crop])[0]
            if self.flip:
                e = e + self.artifact.embed([crop], flip=True)[0]
        return FaceEmbedding(path, e, face, n)

    def verify(
        self,
        left: str | os.PathLike[str],
        right: str | os.PathLike[str],
        threshold: float | None = None,
        timings: Timings | None = None,
    ) -> tuple[Decision, FaceEmbedding, FaceEmbedding]:
        """Same person? At `threshold`, else the artifact's calibrated one; also returns both faces."""
        t = timings if timings is not None else Timings()
        thr = threshold if threshold is not None else self.spec.threshold
        if thr is None:
            raise EdgefaceError(
                f"the spec of {self.artifact.path} has no calibrated threshold; pass --threshold"
            )
        a = self.embed_image(left, t)
        b = self.embed_image(right, t)
        with t.stage("match"):
            return verify(a.embedding, b.embedding, thr), a, b
