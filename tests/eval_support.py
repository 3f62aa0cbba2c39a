"""Builders for the tests of evaluation on a user's data, `threshold`, `compare` and the batch verbs.

Datasets are small folders of links to real LFW faces (compression-split identities for anything that
calibrates, raw_sample photos for detection), built once per session.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from tests.test_runtime_support import LFW, RAW, reference_artifact, reference_spec, with_embedded_spec


def scratch(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"edgeface-{prefix}-"))


@functools.cache
def split_by_identity() -> dict[str, list[Path]]:
    from edgeface.data.lfw import compression_split

    by: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by.setdefault(p.parent.name, []).append(p)
    return by


@functools.cache
def aligned_dataset(identities: int = 16, per_identity: int = 3) -> Path:
    """DIR/<identity>/<aligned112 crop> of compression-split identities with enough images (links)."""
    root = scratch("aligned-data")
    chosen = [(k, v[:per_identity]) for k, v in split_by_identity().items() if len(v) >= per_identity]
    for name, paths in chosen[:identities]:
        (root / name).mkdir()
        for p in paths:
            (root / name / p.name).symlink_to(p)
    return root


@functools.cache
def raw_dataset() -> Path:
    """Four raw_sample identities (5 photos each), plus one photo without a face (a blank wall) and one
    corrupt file inside identity folders, and one image outside any identity folder."""
    root = scratch("raw-data")
    names = sorted(d.name for d in RAW.iterdir() if d.is_dir())[:4]
    for name in names:
        shutil.copytree(RAW / name, root / name)
    cv2.imwrite(str(root / names[0] / "blank_wall.jpg"), np.full((250, 250, 3), 128, np.uint8))
    (root / names[1] / "truncated.jpg").write_bytes(
        (RAW / names[1] / f"{names[1]}_0001.jpg").read_bytes()[:200]
    )
    shutil.copy(RAW / names[2] / f"{names[2]}_0001.jpg", root / "loose.jpg")
    return root


def tiny_grey(src: Path, dest: Path) -> Path:
    """An AT&T-style thumbnail: the 92x112 centre of an aligned crop, shrunk to 23x28, greyscale."""
    img = cv2.imread(str(src))
    thumb = cv2.resize(img[:, 10:102], (23, 28), interpolation=cv2.INTER_AREA)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dest), cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY))
    return dest


def embedded_onnx(dest_dir: Path, threshold: float | None = None) -> Path:
    """The reference network with its spec embedded (as the exporter writes it) and beside it."""
    spec = reference_spec().replace(threshold=threshold) if threshold is not None else reference_spec()
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = with_embedded_spec(dest_dir / "model.onnx", spec)
    Path(str(path) + ".json").write_text(spec.to_json() + "\n")
    return path


def no_threshold_onnx(dest_dir: Path) -> Path:
    """An artifact as an export from unlabelled images leaves it: spec threshold null, inside and beside."""
    spec = reference_spec().replace(threshold=None, threshold_far=None)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = with_embedded_spec(dest_dir / "nothr.onnx", spec)
    Path(str(path) + ".json").write_text(spec.to_json() + "\n")
    return path


def strict_json(text: str) -> object:
    """json.loads that refuses NaN / Infinity, which Python's parser would otherwise accept."""

    def refuse(token: str) -> object:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


__all__ = ["LFW", "RAW", "reference_artifact", "reference_spec"]
