"""Images -> embeddings for evaluation and calibration, with every image that gave no face accounted for.

Two ways in, both the device's own code:
- `aligned`: the images are aligned crops; each is cut and resized by the spec's rule
  (`align.crop_aligned`, aspect ratio kept) and embedded in batches.
- raw photos: the runtime `Pipeline` (YuNet detection, the `--face` policy, landmark refinement,
  ArcFace alignment) embeds each photo as `edgeface verify` would.

An image that cannot be used (no face, only degenerate detections, undecodable) is a *failure to
acquire*: it is recorded with the reason, never silently dropped, and the pairs it belongs to are counted
as lost by the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.io import printable

BATCH = 64


@dataclass
class Acquired:
    embeddings: np.ndarray  # (N, D) float32; rows of failed images are zero
    ok: np.ndarray  # (N,) bool
    failures: list[tuple[Path, str]]  # (image, why) in input order
    several_faces: list[tuple[Path, int]] = field(default_factory=list)  # photos where a face was chosen
    photos_with_degenerate: int = 0  # photos where degenerate detections were dropped beside a face

    def failures_json(self) -> list[dict[str, str]]:
        return [{"image": printable(p), "reason": printable(why)} for p, why in self.failures]


def acquire(
    net: Any,
    paths: Sequence[Path],
    aligned: bool,
    flip: bool = False,
    face_policy: str = "auto",
    detector: str | os.PathLike[str] | None = None,
    refine: bool | str | os.PathLike[str] = True,  # Pipeline.refine_landmarks
    progress: str | None = None,
    workers: int | None = None,  # Pipeline.workers: detection threads (pipeline.batch_threads)
) -> Acquired:
    """Embed every image of `paths` with `net` (an Artifact or TorchFaceModel)."""
    from tqdm.auto import tqdm

    if face_policy == "all":
        raise EdgefaceError("evaluation takes one face per image: --face all is for verify and identify")
    dim = int(net.spec.embedding_dim)
    emb = np.zeros((len(paths), dim), np.float32)
    ok = np.zeros(len(paths), bool)
    failures: list[tuple[Path, str]] = []
    out = Acquired(emb, ok, failures)
    bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
    try:
        if aligned:
            _aligned(net, paths, flip, out, bar)
        else:
            _photos(net, paths, flip, face_policy, detector, refine, out, bar, workers)
    finally:
        bar.close()
    failed_index = {p: i for i, p in enumerate(paths)}
    out.failures.sort(key=lambda f: failed_index[f[0]])
    return out


def _aligned(net: Any, paths: Sequence[Path], flip: bool, out: Acquired, bar: Any) -> None:
    from edgeface.runtime.preprocess import read_image

    for start in range(0, len(paths), BATCH):
        idx, faces = [], []
        for i in range(start, min(start + BATCH, len(paths))):
            try:
                faces.append(read_image(paths[i]))
                idx.append(i)
            except EdgefaceError as e:
                out.failures.append((paths[i], str(e)))
        if faces:
            e = net.embed(faces)
            if flip:
                e = e + net.embed(faces, flip=True)
            out.embeddings[idx] = e
            out.ok[idx] = True
        bar.update(min(start + BATCH, len(paths)) - start)


def _ignore(message: str) -> None:
    """The pipeline's warnings (several faces, degenerate detections) are counted in the summary instead."""


def _photos(
    net: Any,
    paths: Sequence[Path],
    flip: bool,
    face_policy: str,
    detector: str | os.PathLike[str] | None,
    refine: bool | str | os.PathLike[str],
    out: Acquired,
    bar: Any,
    workers: int | None = None,
) -> None:
    from edgeface.runtime.pipeline import Pipeline, one_face

    pipe = Pipeline(
        net,
        detector_path=detector,
        flip=flip,
        refine_landmarks=refine,
        warn=_ignore,
        face=face_policy,
        workers=workers,
    )
    for i, (p, found) in enumerate(pipe.embed_many(paths)):  # detection on worker threads, the network here
        try:
            e = one_face(found)
        except EdgefaceError as err:
            out.failures.append((p, str(err)))
        else:
            out.embeddings[i] = e.embedding
            out.ok[i] = True
            if e.faces_found > 1:
                out.several_faces.append((p, e.faces_found))
            out.photos_with_degenerate += e.degenerate > 0
        bar.update(1)
