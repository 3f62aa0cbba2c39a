"""Many images in one process: a list of pairs to verify, a folder of identities to enroll.

A process start (Python, the inference runtime, the detector) costs 1-3 s, far more than one face, so
batch work loads the artifact once and embeds each image once however many pairs it is in
(`verify --pairs`), and enrolls a folder per identity, one gallery transaction each (`enroll --from-dir`).
An image that gives no usable face is a result (a pair with an error, an image skipped with its reason),
not the end of the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeface.runtime.match import verify
from edgeface.runtime.pipeline import FaceEmbedding, Pipeline, one_face, require_threshold

from edgeface.errors import EdgefaceError
from edgeface.io import os_errors, printable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # as edgeface.data.folders
MAX_PAIR_LIST_BYTES = 64 << 20
Check = Callable[[list[FaceEmbedding]], None]  # raises EdgefaceError for a face to refuse (quality gate)


def read_pair_list(path: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """One pair per line: two image paths separated by a tab (or, without a tab, by whitespace). Blank
    lines and lines starting with # are skipped; relative paths are relative to the list's own folder.
    Every image must exist: a typo is one error naming the line, before anything is loaded."""
    path = Path(path)
    shown = printable(path)
    with os_errors("read", path):
        if not path.is_file():
            raise EdgefaceError(f"pairs list not found: {shown}")
        if path.stat().st_size > MAX_PAIR_LIST_BYTES:
            raise EdgefaceError(f"{shown} is larger than {MAX_PAIR_LIST_BYTES >> 20} MB; not a pairs list")
        raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgefaceError(f"{shown}: not a text pairs list (byte {e.start} is not UTF-8)") from None
    if "\x00" in text:
        raise EdgefaceError(f"{shown}: not a text pairs list (it contains NUL bytes)")
    base = path.parent
    pairs: list[tuple[Path, Path]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        parts = [p for p in parts if p]
        if len(parts) != 2:
            raise EdgefaceError(
                f"{shown}:{n}: expected two image paths (tab-separated when they contain spaces), got "
                f"{len(parts)} field(s)"
            )
        a, b = (base / p for p in parts)
        for img in (a, b):
            if not img.is_file():
                raise EdgefaceError(f"{shown}:{n}: image not found: {printable(img)}")
        pairs.append((a, b))
    if not pairs:
        raise EdgefaceError(f"{shown}: no pairs (one 'IMAGE1<tab>IMAGE2' per line)")
    return pairs


@dataclass
class _Embedded:
    """Each image embedded once, a few ahead of the pairs that need it (Pipeline.embed_many): its faces,
    or why it has none."""

    stream: Iterator[tuple[Path, list[FaceEmbedding] | EdgefaceError]]
    check: Check | None
    done: dict[Path, list[FaceEmbedding] | str] = field(default_factory=dict)

    def get(self, path: Path) -> list[FaceEmbedding] | str:
        while path not in self.done:
            p, found = next(self.stream)
            if not isinstance(found, EdgefaceError) and self.check is not None:
                try:
                    self.check(found)
                except EdgefaceError as e:
                    found = e
            self.done[p] = str(found) if isinstance(found, EdgefaceError) else found
        return self.done[path]


def verify_pair_list(
    pipe: Pipeline,
    pairs: list[tuple[Path, Path]],
    threshold: float | None = None,
    check: Check | None = None,
    face_json: Callable[[FaceEmbedding], dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """One result per pair, in order: match, score and threshold (the best pair of faces under
    `--face all`), or `error` naming why an image gave no usable face."""
    thr = require_threshold(pipe, threshold)
    images = list(dict.fromkeys(p for pair in pairs for p in pair))  # in the order the pairs need them
    stream = pipe.embed_many(images)
    cache = _Embedded(stream, check)
    try:
        yield from _verdicts(pairs, cache, thr, face_json)
    finally:
        stream.close()  # an interrupted batch stops its detection threads


def _verdicts(
    pairs: list[tuple[Path, Path]],
    cache: _Embedded,
    thr: float,
    face_json: Callable[[FaceEmbedding], dict[str, Any]] | None,
) -> Iterator[dict[str, Any]]:
    for a, b in pairs:
        out: dict[str, Any] = {"image1": printable(a), "image2": printable(b)}
        fa, fb = cache.get(a), cache.get(b)
        bad = fa if isinstance(fa, str) else fb if isinstance(fb, str) else None
        if bad is not None:
            out["error"] = printable(bad)
        else:
            assert not isinstance(fa, str) and not isinstance(fb, str)
            best = max(((verify(x.embedding, y.embedding, thr), x, y) for x in fa for y in fb), key=_score)
            d, x, y = best
            out.update(match=d.match, score=d.score, threshold=d.threshold)
            if face_json is not None:
                out["faces"] = [face_json(x), face_json(y)]
        yield out


def _score(r: tuple[Any, FaceEmbedding, FaceEmbedding]) -> float:
    return float(r[0].score)


@dataclass
class EnrollPlan:
    identities: list[tuple[str, list[Path]]]  # folder name -> its images, sorted
    loose: list[Path]  # images directly in the root: no identity

    @property
    def images(self) -> int:
        return sum(len(p) for _, p in self.identities)


def plan_enrollment(root: str | os.PathLike[str]) -> EnrollPlan:
    """DIR/<identity>/<image>: the identity is the first folder under DIR (images at any depth below it)."""
    root = Path(root)
    shown = printable(root)
    with os_errors("read", root):
        if not root.is_dir():
            raise EdgefaceError(
                f"folder not found: {shown}" if not root.exists() else f"not a folder: {shown}"
            )
        loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        identities = []
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if images:
                identities.append((d.name, images))
    if not identities:
        raise EdgefaceError(
            f"no identity folders with images in {shown}: expected {shown}/<identity>/<image> "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    return EnrollPlan(identities, loose)


def embed_identity(
    pipe: Pipeline, images: list[Path], check: Check | None, on_image: Callable[[], None] | None = None
) -> tuple[list[FaceEmbedding], list[tuple[Path, str]]]:
    """The templates of one identity's images, and the images skipped with the reason."""
    kept: list[FaceEmbedding] = []
    skipped: list[tuple[Path, str]] = []
    for p, found in pipe.embed_many(images):
        try:
            e = one_face(found)
            if check is not None:
                check([e])
            kept.append(e)
        except EdgefaceError as err:
            skipped.append((p, str(err)))
        if on_image is not None:
            on_image()
    return kept, skipped
