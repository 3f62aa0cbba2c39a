"""A pack as one file (.tar.gz, .tgz, .tar or .zip): written reproducibly, extracted defensively.

An archive is data from anywhere, so extraction never trusts it (docs/security.md):
- only regular files and folders are taken; a symbolic or hard link, device, FIFO or encrypted member
  refuses the whole archive;
- every member name passes `pack.check_name` (relative, no `..`, no hidden, absolute or drive-letter
  parts, at most three levels: an optional top folder, `licenses/`, the file), and a name seen twice is
  refused;
- sizes are bounded while reading (MAX_MEMBERS members, MAX_EXTRACT_BYTES of decompressed data in all,
  counted on the decompressed stream itself, so a gzip or zip bomb stops at the bound instead of filling
  the disk);
- files are created by us (`O_EXCL | O_NOFOLLOW`, mode 0600) under a private temporary folder: the
  archive's own permissions, owners and times are never applied.
The folder is removed when the process exits; the pack inside it is then checked like any pack folder.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from edgeface.runtime.pack import ARCHIVE_SUFFIXES, MANIFEST, Pack, check_name, safe_name

from edgeface.errors import EdgefaceError
from edgeface.io import atomic_write, printable

MAX_MEMBERS = 2000
MAX_EXTRACT_BYTES = 4 << 30  # decompressed, all members together
_CHUNK = 1 << 20
_EXTRACTED: list[Path] = []
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: archives are reproducible


def _cleanup() -> None:
    for d in _EXTRACTED:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


class _Budget:
    """Counts decompressed bytes across every member; past the bound the archive is refused."""

    def __init__(self, source: Path) -> None:
        self.left = MAX_EXTRACT_BYTES  # read at each extraction, so tests can lower it
        self.source = source

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise EdgefaceError(
                f"pack archive {printable(self.source)} unpacks to more than {MAX_EXTRACT_BYTES >> 20} MB; "
                "refused (not a pack, or a decompression bomb)"
            )


class _CountingReader(io.RawIOBase):
    """A decompressed stream whose every byte is charged to the budget (tar headers and skipped data too)."""

    def __init__(self, inner: IO[bytes], budget: _Budget) -> None:
        self.inner, self.budget = inner, budget

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.inner.read(len(b))
        self.budget.take(len(data))
        b[: len(data)] = data
        return len(data)


def extract(source: Path) -> Path:
    """Extract `source` into a new private folder; returns the folder that holds the manifest (the
    archive's top, or its single top folder)."""
    if not source.is_file():
        raise EdgefaceError(f"pack not found: {printable(source)}")
    tmp = Path(tempfile.mkdtemp(prefix="edgeface-pack-"))
    _EXTRACTED.append(tmp)
    try:
        with _archive_errors(source):
            if str(source).lower().endswith(".zip"):
                _extract_zip(source, tmp)
            else:
                _extract_tar(source, tmp)
        if (tmp / MANIFEST).is_file():
            return tmp
        tops = list(tmp.iterdir())
        if len(tops) == 1 and tops[0].is_dir() and (tops[0] / MANIFEST).is_file():
            return tops[0]
        raise EdgefaceError(
            f"pack archive {printable(source)} holds no {MANIFEST} at its top or in one top folder"
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def _archive_errors(source: Path) -> Iterator[None]:
    try:
        yield
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        if isinstance(e, EdgefaceError):
            raise
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise EdgefaceError(
            f"cannot read pack archive {printable(source)}: {reason} (damaged, truncated or not a "
            f"{'/'.join(ARCHIVE_SUFFIXES)} file)"
        ) from None


def _member_name(raw: str, source: Path, seen: set[str]) -> str | None:
    """The checked relative name of a member, or None for the archive's own root entry ('.', './')."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if name.endswith("/") else name
    if name in ("", "."):
        return None
    check_name(name, f"pack archive {printable(source)}", depth=3)
    if name in seen:
        raise EdgefaceError(f"pack archive {printable(source)}: '{printable(name)}' appears twice")
    seen.add(name)
    return name


def _write_member(dest: Path, name: str, read: Callable[[int], bytes], budget: _Budget | None) -> None:
    """`budget`: None when the bytes are already charged on the decompressed stream (tar)."""
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := read(_CHUNK):
            if budget is not None:
                budget.take(len(chunk))
            out.write(chunk)


def _refuse(source: Path, name: str, what: str) -> None:
    raise EdgefaceError(
        f"pack archive {printable(source)}: '{printable(name)}' is {what}; a pack holds regular files only"
    )


def _extract_tar(source: Path, dest: Path) -> None:
    budget, seen = _Budget(source), set()
    with open(source, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        counted = io.BufferedReader(_CountingReader(stream, budget), _CHUNK)
        # streaming mode ("r|"): members are read once, in order; nothing is seeked or extracted by tarfile
        with tarfile.open(fileobj=counted, mode="r|") as tar:
            for n, member in enumerate(tar):
                if n >= MAX_MEMBERS:
                    raise EdgefaceError(
                        f"pack archive {printable(source)} has more than {MAX_MEMBERS} members"
                    )
                if member.isdir():
                    _member_name(member.name, source, set())
                    continue
                if member.issym() or member.islnk():
                    _refuse(source, member.name, "a link")
                if not member.isreg():
                    _refuse(source, member.name, "not a regular file")
                name = _member_name(member.name, source, seen)
                if name is None:
                    continue
                f = tar.extractfile(member)
                assert f is not None  # a regular member always has data
                _write_member(dest, name, f.read, None)


def _extract_zip(source: Path, dest: Path) -> None:
    budget, seen = _Budget(source), set()
    with zipfile.ZipFile(source) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise EdgefaceError(f"pack archive {printable(source)} has more than {MAX_MEMBERS} members")
        for info in infos:
            mode = info.external_attr >> 16
            if info.is_dir():
                _member_name(info.filename, source, set())
                continue
            if info.flag_bits & 0x1:
                _refuse(source, info.filename, "encrypted")
            if stat.S_ISLNK(mode):
                _refuse(source, info.filename, "a link")
            if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                _refuse(source, info.filename, "not a regular file")
            name = _member_name(info.filename, source, seen)
            if name is None:
                continue
            if info.file_size > budget.left:  # the declared size; the bytes read are counted as well
                budget.take(info.file_size)
            with zf.open(info) as f:
                _write_member(dest, name, f.read, budget)


# --- writing ---------------------------------------------------------------------------------------------
def top_folder(dest: Path) -> str:
    """`mobilefacenet.tar.gz` -> `mobilefacenet`: the folder the archive unpacks into."""
    name = dest.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_name(name or "pack")


class _HashingReader(io.RawIOBase):
    """Reads a pack file for the archive while hashing it, so what is archived is what was verified."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.f.read(len(b))
        self.sha.update(data)
        self.size += len(data)
        b[: len(data)] = data
        return len(data)


def write_archive(pack: Pack, dest: str | os.PathLike[str]) -> Path:
    """One archive file of `pack` (its manifest and every listed file, under one top folder named after
    `dest`), written atomically. Reproducible: fixed times, owners and modes, sorted members."""
    dest = Path(dest)
    if not str(dest).lower().endswith(ARCHIVE_SUFFIXES):
        raise EdgefaceError(
            f"--archive {printable(dest)}: the name must end in one of {', '.join(ARCHIVE_SUFFIXES)}"
        )
    top = top_folder(dest)
    names = [MANIFEST, *sorted(pack.manifest.files)]

    def members() -> Iterator[tuple[str, Path, Any]]:
        for name in names:
            path = pack.root / MANIFEST if name == MANIFEST else pack.file(name)
            yield name, path, pack.manifest.files.get(name)

    def check(name: str, entry: Any, reader: _HashingReader) -> None:
        if entry is not None and (reader.size != entry.size or reader.sha.hexdigest() != entry.sha256):
            raise EdgefaceError(
                f"{pack.where}: {printable(name)} changed since the pack was written; archive not written"
            )

    def write_tar(tmp: str) -> None:
        with open(tmp, "wb") as raw:
            gz: IO[bytes] = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
                if not dest.name.lower().endswith(".tar")
                else raw
            )
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                dirs = [top] + sorted({f"{top}/{n.rsplit('/', 1)[0]}" for n in names if "/" in n})
                for d in dirs:
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                for name, path, entry in members():
                    info = tarfile.TarInfo(f"{top}/{name}")
                    info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
                    with open(path, "rb") as f:
                        reader = _HashingReader(f)
                        tar.addfile(info, io.BufferedReader(reader))
                    check(name, entry, reader)
            if gz is not raw:
                gz.close()

    def write_zip(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, path, entry in members():
                info = zipfile.ZipInfo(f"{top}/{name}", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                with open(path, "rb") as f, zf.open(info, "w", force_zip64=True) as out:
                    reader = _HashingReader(f)
                    while chunk := reader.read(_CHUNK):
                        out.write(chunk)
                check(name, entry, reader)

    return atomic_write(dest, write_zip if dest.name.lower().endswith(".zip") else write_tar)
