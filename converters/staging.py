"""All-or-nothing output: artifacts are written into a hidden staging folder beside their destination and
moved into place only when every artifact and every parity check has passed, so a failed export leaves no
partial file behind (and never replaces a good artifact from an earlier run with a bad one)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeface.errors import EdgefaceError


def check_writable_dir(outdir: Path) -> None:
    """Fail before any slow work when the output folder cannot be created or written."""
    if outdir.exists() and not outdir.is_dir():
        raise EdgefaceError(f"output path exists and is not a folder: {outdir}")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgefaceError(f"cannot create output folder {outdir}: {e.strerror}") from None
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise EdgefaceError(f"output folder is not writable: {outdir}")


@contextmanager
def staged(outdir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into `outdir`, on any error delete it."""
    check_writable_dir(outdir)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".edgeface-export-", dir=outdir))
    except OSError as e:
        raise EdgefaceError(f"cannot write into output folder {outdir}: {e.strerror}") from None
    try:
        yield stage
        # artifacts before their sidecars, so a reader that sees a sidecar finds its artifact
        files = sorted(stage.iterdir(), key=lambda p: p.suffix == ".json")
        for f in files:
            os.replace(f, outdir / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
