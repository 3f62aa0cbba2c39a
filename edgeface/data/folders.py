"""Image folders: the input of calibration, distillation and pruning fine-tunes."""

from __future__ import annotations

import os
from pathlib import Path

from edgeface.errors import EdgefaceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(root: str | os.PathLike[str]) -> list[Path]:
    """All images below `root`, sorted for reproducibility; an error if there are none."""
    root = Path(root)
    if not root.exists():
        raise EdgefaceError(f"image folder not found: {root}")
    if not root.is_dir():
        raise EdgefaceError(f"not a folder: {root}")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise EdgefaceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return images


def compression_images(root: str | os.PathLike[str]) -> list[Path]:
    """Images for calibration / fine-tuning from `--calib DIR`.

    An LFW root (pairs.txt + aligned112/) yields only the compression split, so nobody calibrates on test
    identities by accident; any other folder is taken whole.
    """
    from edgeface.data.lfw import compression_split, is_lfw_root

    root = Path(root)
    if is_lfw_root(root):
        return compression_split(root)
    return list_images(root)
