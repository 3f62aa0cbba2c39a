"""The on-device pipeline: decode -> detect -> select -> align -> embed -> match, each stage timed.

One object holds the loaded artifact and detector so a device pays their start-up once; every CLI verb
(verify, enroll, identify, profile) goes through `Pipeline.embed_faces`, so what is profiled is what runs.
Which face of a photo is used is the `face` policy (`edgeface.runtime.select`), the same for every verb.

`aligned=True` is for inputs that are already aligned face crops (a dataset's crops, a thumbnail from
another system): no detector is loaded or run, and the crop becomes the network's input through
`align.crop_aligned`, the spec's face crop with the aspect ratio kept, never squeezed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import ARCFACE_TEMPLATE, align_face, crop_aligned
from edgeface.runtime.backends import Artifact
from edgeface.runtime.detect import Face, YuNetDetector
from edgeface.runtime.match import Decision, verify
from edgeface.runtime.preprocess import read_image
from edgeface.runtime.select import DEFAULT_POLICY, check_policy, select, visible_fraction

from edgeface.errors import EdgefaceError
from edgeface.io import printable
from edgeface.machine import machine_cores
from edgeface.spec import ALIGNED_SIDE, ModelSpec

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
    faces_found: int  # usable faces in the photo
    visible: float = 1.0  # fraction of the face inside the photo (select.visible_fraction)
    aligned: bool = False  # the image was taken as an aligned crop; `face` is the whole image
    degenerate: int = 0  # detections of the photo ignored as degenerate (non-finite, zero-area, outside)


@dataclass
class _Located:
    """One image's faces, ready for the network."""

    path: Path
    faces: list[Face]
    crops: list[np.ndarray]
    n: int  # usable faces in the photo
    visible: list[float]
    aligned: bool
    degenerate: int = 0


def aligned_face(shape: tuple[int, ...], spec: ModelSpec) -> Face:
    """The face an aligned crop holds: the whole image, its landmarks where the ArcFace template lands in
    it under the mapping `crop_aligned` uses (so the quality gate measures an aligned crop like any face)."""
    fh, fw = shape[:2]
    h, w = spec.input_size
    bx, by, bw, bh = spec.crop_box()
    if (fh, fw) == (h, w):  # the network's own input: the crop box at the input's scale
        lm = (ARCFACE_TEMPLATE - (bx, by)) * (w / bw)
    elif fh == fw:  # a whole ArcFace-aligned face at any resolution
        lm = ARCFACE_TEMPLATE * (fh / ALIGNED_SIDE)
    else:  # the centred region with the network's aspect ratio stands for the crop box
        cw, ch = (fw, fw * h / w) if fw * h <= fh * w else (fh * w / h, fh)
        lm = (ARCFACE_TEMPLATE - (bx, by)) * (cw / bw) + ((fw - cw) / 2, (fh - ch) / 2)
    return Face((0.0, 0.0, float(fw), float(fh)), lm.astype(np.float32), 1.0, float(max(fw, fh)))


def one_face(found: list[FaceEmbedding] | EdgefaceError) -> FaceEmbedding:
    """The one face of a photo, from `embed_faces` or an `embed_many` result (whose error is raised here);
    several (policy `all`) is refused, because one template per photo (enroll) must not silently become
    "whichever face came first"."""
    if isinstance(found, EdgefaceError):
        raise found
    if len(found) > 1:
        raise EdgefaceError(
            f"{found[0].faces_found} faces found in {found[0].path}; --face all gives one result per face, "
            "which this command cannot use: choose auto, largest, center or highest-score"
        )
    return found[0]


def require_threshold(pipe: Pipeline, threshold: float | None) -> float:
    """`threshold`, else the artifact's calibrated one; an artifact exported from unlabelled images has
    none, and a verdict needs one."""
    if threshold is not None:
        return threshold
    if pipe.spec.threshold is None:
        shown = printable(pipe.artifact.path)
        raise EdgefaceError(
            f"{shown} has no calibrated threshold; pass --threshold, or calibrate one on labelled faces: "
            f"edgeface threshold {shown} --data DIR/<identity>/<image>"
        )
    return pipe.spec.threshold


def batch_threads(threads: int | None, detecting: bool) -> tuple[int | None, int | None]:
    """(the network's threads, the detection workers) for work over many photos (verify --pairs, enroll
    --from-dir, eval --data). With detection, the photos' decoding, detection and refinement run on
    `threads` workers (default every core) and the network on one thread beside them: an ORT or XNNPACK
    pool of its own spins between calls and takes the cores the detectors need (raw disjoint pairs, int8
    ONNX, two cores: 66 -> 53 ms per pair, docs/runtime.md). Without detection (aligned crops) the network
    gets the threads."""
    if not detecting:
        return threads, None
    return 1, threads or machine_cores()


def landmarker_for(artifact: object, refine: bool | str | os.PathLike[str]) -> str | os.PathLike[str] | None:
    """The face-mesh model refinement uses: the one given, else the pack's; None without refinement (the
    detector then falls back to $EDGEFACE_LANDMARKER, or to YuNet's own refinement)."""
    if refine is False:
        return None
    return getattr(artifact, "landmarker_path", None) if refine is True else refine


class Pipeline:
    """`face`: which face of a photo is used (`select.POLICIES`; `all` embeds every face, see
    `embed_faces`). `strict_single_face`: several usable faces in one photo is an error instead.

    `refine_landmarks`: True re-detects small faces upscaled for better landmarks (YuNetDetector.refine),
    or takes them from a face-mesh model (runtime.landmarks) when the artifact's pack holds one or
    $EDGEFACE_LANDMARKER names one; a path to a face-mesh model uses that one; False keeps YuNet's first
    landmarks. It counts in the detect stage.

    `flip` adds the mirrored face's embedding (test-time augmentation, twice the embed cost); it must match
    how the artifact's threshold was calibrated.

    `aligned`: every input is an aligned face crop; detection, face choice and refinement are skipped and
    no detector is loaded. `artifact` may be any object with the Artifact's face interface (`spec`,
    `embed`, `path`, `num_threads`), e.g. edgeface.eval.embed.TorchFaceModel.
    """

    def __init__(
        self,
        artifact: Artifact,
        detector: YuNetDetector | None = None,
        detector_path: str | os.PathLike[str] | None = None,
        strict_single_face: bool = False,
        flip: bool = False,
        refine_landmarks: bool | str | os.PathLike[str] = True,
        warn: Callable[[str], None] = _stderr,
        face: str = DEFAULT_POLICY,
        aligned: bool = False,
        workers: int | None = None,
    ) -> None:
        self.artifact = artifact
        self.workers = workers  # embed_many's detection threads (default: the artifact's, else every core)
        if artifact.num_threads:  # one thread budget for the whole pipeline, detector included
            cv2.setNumThreads(artifact.num_threads)
        self.spec = artifact.spec
        self.aligned = aligned
        # --detector, else the detector of the pack the artifact came from, else $EDGEFACE_YUNET / default
        self.detector = (
            None
            if aligned
            else (
                detector
                or YuNetDetector(
                    detector_path or getattr(artifact, "detector_path", None),
                    landmarker=landmarker_for(artifact, refine_landmarks),
                    # one photo at a time: the thread budget; a batch: one thread per detection worker
                    threads=1 if workers else (artifact.num_threads or 1),
                )
            )
        )
        self.strict_single_face = strict_single_face
        self.flip = flip
        self.refine_landmarks = refine_landmarks is not False
        self.warn = warn
        self.face = check_policy(face)

    def find_faces(
        self,
        image: np.ndarray,
        source: Path | str,
        detector: YuNetDetector | None = None,
        rejected: list[str] | None = None,
    ) -> tuple[list[Face], int]:
        """The face(s) the policy takes (best first) and how many usable faces the photo has.

        Degenerate detections (non-finite, zero-area, outside the frame) never count as faces; a photo
        with nothing else is an error that says so rather than "no face". `detector`: a clone of the
        pipeline's, for another thread (embed_many); `rejected` receives why detections were ignored.
        """
        detector = detector or self.detector
        if detector is None:
            raise EdgefaceError("this pipeline takes aligned crops (aligned=True): it has no detector")
        if rejected is None:
            rejected = []
        faces = detector.detect(image, rejected)
        if not faces:
            if rejected:
                raise EdgefaceError(
                    f"no usable face in {source}: the detector's {len(rejected)} detection(s) were "
                    f"degenerate ({'; '.join(sorted(set(rejected)))})"
                )
            raise EdgefaceError(f"no face found in {source}")
        if rejected:
            self.warn(f"{len(rejected)} degenerate detection(s) in {source} ignored")
        if len(faces) > 1 and self.strict_single_face:
            raise EdgefaceError(
                f"{len(faces)} faces found in {source}; --strict-single-face accepts exactly one"
            )
        h, w = image.shape[:2]
        chosen = select(faces, self.face, w, h)
        if len(faces) > 1 and self.face != "all":
            box = ", ".join(f"{v:.0f}" for v in chosen[0].box)
            self.warn(
                f"{len(faces)} faces found in {source}; using the face at box [{box}] (x, y, w, h), "
                f"chosen by --face {self.face}"
            )
        if self.refine_landmarks:
            chosen = [detector.refine(image, f) for f in chosen]
        return chosen, len(faces)

    def find_face(self, image: np.ndarray, source: Path | str) -> tuple[Face, int]:
        """The single face the policy takes (under `all`, the one `auto` would take)."""
        faces, n = self.find_faces(image, source)
        return faces[0], n

    def embed_faces(
        self, path: str | os.PathLike[str], timings: Timings | None = None
    ) -> list[FaceEmbedding]:
        """One embedding per face the policy takes: one face, or every usable face (best first) for `all`."""
        t = timings if timings is not None else Timings()
        return self._embed(self._locate(Path(path), t, self.detector), t)

    def embed_many(
        self, paths: Iterable[str | os.PathLike[str]], workers: int | None = None
    ) -> Iterator[tuple[Path, list[FaceEmbedding] | EdgefaceError]]:
        """`embed_faces` of each path, in order, or the EdgefaceError it raised (a batch goes on).

        A raw photo's cost is decoding, detection and landmark refinement, not the network, and OpenCV runs
        them without holding the GIL: so those run on `workers` threads (default: the pipeline's `workers`,
        else the artifact's thread budget, else every core), each with its own detector, a few images
        ahead, while the network runs here, in order (a TFLite interpreter must not be called from two
        threads).
        """
        n = workers if workers is not None else (self.workers or self.artifact.num_threads or machine_cores())
        todo = iter(paths)
        if n <= 1:
            for p in todo:
                try:
                    yield Path(p), self.embed_faces(p)
                except EdgefaceError as e:
                    yield Path(p), e
            return
        local = threading.local()

        def locate(p: Path) -> _Located:
            if self.detector is not None and not hasattr(local, "detector"):
                local.detector = self.detector.clone()
            return self._locate(p, Timings(), getattr(local, "detector", None))

        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # parallel over images instead: OpenCV's own threads barely help on one face
        pending: deque[tuple[Path, Future[_Located]]] = deque()
        pool = ThreadPoolExecutor(n, thread_name_prefix="edgeface-locate")
        try:

            def submit() -> None:
                p = next(todo, None)
                if p is not None:
                    pending.append((Path(p), pool.submit(locate, Path(p))))

            for _ in range(2 * n):
                submit()
            while pending:
                p, job = pending.popleft()
                submit()
                try:
                    found: list[FaceEmbedding] | EdgefaceError = self._embed(job.result(), Timings())
                except EdgefaceError as e:
                    found = e
                yield p, found
        finally:
            for _, job in pending:
                job.cancel()
            pool.shutdown(wait=True)
            cv2.setNumThreads(cv_threads)

    def _locate(self, path: Path, t: Timings, detector: YuNetDetector | None) -> _Located:
        """Everything before the network: decode, detect, choose, refine, align."""
        with t.stage("decode"):
            image = read_image(path)
        h, w = image.shape[:2]
        if self.aligned:
            with t.stage("align"):
                crop = crop_aligned(image, self.spec)
            return _Located(path, [aligned_face(image.shape, self.spec)], [crop], 1, [1.0], True)
        rejected: list[str] = []
        with t.stage("detect"):
            faces, n = self.find_faces(image, path, detector, rejected)
        with t.stage("align"):
            crops = [
                align_face(image, f.landmarks, self.spec.input_size, self.spec.crop_box()) for f in faces
            ]
        visible = [visible_fraction(f, w, h) for f in faces]
        return _Located(path, faces, crops, n, visible, False, len(rejected))

    def _embed(self, found: _Located, t: Timings) -> list[FaceEmbedding]:
        with t.stage("embed"):
            e = self.artifact.embed(found.crops)
            if self.flip:
                e = e + self.artifact.embed(found.crops, flip=True)
        return [
            FaceEmbedding(found.path, e[i], f, found.n, found.visible[i], found.aligned, found.degenerate)
            for i, f in enumerate(found.faces)
        ]

    def embed_image(self, path: str | os.PathLike[str], timings: Timings | None = None) -> FaceEmbedding:
        """The embedding of the one face the policy takes; `all` is refused when the photo has several,
        because one template per photo (enroll) must not silently become "whichever face came first"."""
        return one_face(self.embed_faces(path, timings))

    def verify_faces(
        self,
        left: str | os.PathLike[str],
        right: str | os.PathLike[str],
        threshold: float | None = None,
        timings: Timings | None = None,
    ) -> list[tuple[Decision, FaceEmbedding, FaceEmbedding]]:
        """Every pair of a face taken from `left` and one from `right` (one pair unless the policy is
        `all`), best score first, at `threshold`, else the artifact's calibrated one."""
        t = timings if timings is not None else Timings()
        thr = require_threshold(self, threshold)
        a = self.embed_faces(left, t)
        b = self.embed_faces(right, t)
        with t.stage("match"):
            pairs = [(verify(x.embedding, y.embedding, thr), x, y) for x in a for y in b]
        return sorted(pairs, key=lambda p: -p[0].score)

    def verify(
        self,
        left: str | os.PathLike[str],
        right: str | os.PathLike[str],
        threshold: float | None = None,
        timings: Timings | None = None,
    ) -> tuple[Decision, FaceEmbedding, FaceEmbedding]:
        """Same person? The best-scoring pair of `verify_faces` (the only pair unless the policy is `all`)."""
        return self.verify_faces(left, right, threshold, timings)[0]
