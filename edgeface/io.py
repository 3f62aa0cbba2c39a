"""Output files and the errors of the system underneath them, in one place.

- `atomic_write`: every output edgeface produces appears whole or not at all. A crash, Ctrl-C or full disk
  in the middle of a write must never leave a half-written report, spec or checkpoint where a user (or the
  next command) would take it for a good one.
- `os_errors` / `sqlite_errors`: what the operating system or SQLite refused (a full disk, a read-only or
  virtual filesystem, a parent that is a file, a non-UTF-8 name) becomes one `EdgefaceError` line naming
  the path and the reason, never a traceback.
- `dumps_json`: JSON without NaN or Infinity, which strict parsers reject and which only ever means a
  number went wrong upstream.

Stdlib only: the runtime uses it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeface.errors import EdgefaceError

# errno -> what a user should read; anything else falls back to the system's own strerror
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.EFBIG: "file too large for this file system or process limit",
    errno.ENAMETOOLONG: "name too long",
    errno.EIO: "input/output error (failing disk or virtual file system)",
    errno.EINVAL: "the file system does not support this (virtual or special file system?)",
    errno.ELOOP: "too many symbolic links",
}


def printable(text: object) -> str:
    """`text` safe to print on one line: non-UTF-8 bytes (surrogate escapes of file names) and control
    characters (newlines that would forge output lines, terminal escapes) are shown as escapes."""
    s = os.fsdecode(text) if isinstance(text, bytes | os.PathLike) else str(text)
    out = []
    for ch in s:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _INVISIBLE_CONTROLS:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


# bidi overrides/isolates can make a printed name read differently from what it is
_INVISIBLE_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def os_reason(e: OSError) -> str:
    return _REASONS.get(e.errno or -1, e.strerror or str(e) or type(e).__name__)


@contextmanager
def os_errors(action: str, path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Turn an OSError (or a name the system cannot encode) into one line: 'cannot ACTION PATH: reason'."""
    where = f" {printable(path)}" if path is not None else ""
    try:
        yield
    except OSError as e:
        raise EdgefaceError(f"cannot {action}{where}: {os_reason(e)}") from None
    except UnicodeError:
        raise EdgefaceError(f"cannot {action}{where}: the name is not valid UTF-8") from None


@contextmanager
def sqlite_errors(what: str) -> Iterator[None]:
    """SQLite's exceptions -> one clear line naming `what` (e.g. 'gallery PATH') and what to do."""
    import sqlite3

    try:
        yield
    except sqlite3.OperationalError as e:
        msg = str(e)
        if "locked" in msg or "busy" in msg:
            raise EdgefaceError(f"{what} is locked by another process; retry when it finishes") from None
        if "readonly" in msg or "read-only" in msg:
            raise EdgefaceError(f"{what} is read-only ({msg}); write to a copy on a writable disk") from None
        if "disk is full" in msg or "disk I/O" in msg:
            raise EdgefaceError(f"{what}: cannot write ({msg}); free space or use another disk") from None
        if "unable to open" in msg:
            raise EdgefaceError(
                f"{what}: cannot open ({msg}; is its folder missing, read-only or a virtual file system?)"
            ) from None
        raise EdgefaceError(f"{what}: {msg}") from None
    except sqlite3.DatabaseError as e:
        raise EdgefaceError(f"{what} is corrupt or not a database ({e})") from None
    except OSError as e:
        raise EdgefaceError(f"{what}: {os_reason(e)}") from None
    except UnicodeError:
        raise EdgefaceError(f"{what}: a name or value is not valid UTF-8") from None


def check_output_file(path: str | os.PathLike[str]) -> None:
    """Before slow work: can a file be written at `path`? One line saying why not (its folder is missing,
    a parent is a file, it is a folder, the folder is read-only); a device or FIFO target is accepted."""
    path = Path(path)
    shown = printable(path)
    with os_errors("write", path):
        if path.is_dir():
            raise EdgefaceError(f"cannot write {shown}: it is a folder")
        if _is_special(path):
            return
        parent = path.parent
        for p in (parent, *parent.parents):
            if p.exists():
                if not p.is_dir():
                    raise EdgefaceError(f"cannot write {shown}: {printable(p)} is a file, not a folder")
                break
        if not parent.is_dir():
            raise EdgefaceError(f"cannot write {shown}: output folder {printable(parent)} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise EdgefaceError(f"cannot write {shown}: folder {printable(parent)} is read-only")


def _is_special(path: Path) -> bool:
    """An existing target that is not a regular file or a folder: a device (/dev/null, /dev/full), FIFO or
    socket. Renaming a temp file over it would replace the device node itself, so it is written in place."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], mode: int = 0o644) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`.

    Any OS failure (full disk, read-only or virtual filesystem, missing parent, parent that is a file) is
    an EdgefaceError naming `path`, and the temp file is removed. A device or FIFO target is written
    directly (there is nothing to replace atomically)."""
    return atomic_write_all([(path, write)], mode)[0]


def atomic_write_all(
    outputs: Sequence[tuple[str | os.PathLike[str], Callable[[str], None]]], mode: int = 0o644
) -> list[Path]:
    """Several outputs, all or none: each is written to a temp file beside its target first, and only
    when every one is complete are they renamed into place (a full disk on the second leaves the first
    untouched too)."""
    staged: list[tuple[Path, str | None]] = []
    try:
        for target, write in outputs:
            path = Path(target)
            with os_errors("write", path):
                if path.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "is a folder")
                if _is_special(path):
                    staged.append((path, None))
                    continue
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.close(fd)
                staged.append((path, tmp))
                write(tmp)
                os.chmod(tmp, mode)  # mkstemp makes 0600; outputs must be readable by a service user too
        jobs = list(zip(staged, outputs, strict=True))
        for (path, tmp), (_, write) in jobs:  # devices and FIFOs first: a failure there renames nothing
            if tmp is None:
                with os_errors("write", path):
                    write(str(path))
        for (path, tmp), _ in jobs:
            if tmp is not None:
                with os_errors("write", path):
                    os.replace(tmp, path)
    finally:
        for _, tmp in staged:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
    return [path for path, _ in staged]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def emit(text: str) -> None:
    """Print one result on stdout. A stdout that cannot take it (redirected onto a full disk or /dev/full,
    a closed pipe) is one error line; stdout is then pointed at /dev/null so the interpreter's final flush
    does not print a second, raw error."""
    import sys

    try:
        sys.stdout.write(printable_lines(text) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        reason = os_reason(e) if isinstance(e, OSError) else "it is closed"
        raise EdgefaceError(f"cannot write the output to standard output: {reason}") from None


def printable_lines(text: str) -> str:
    """`printable` for each line of a multi-line text (the line breaks themselves are kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def dumps_json(obj: Any, lines: bool = False) -> str:
    """Indented JSON (`lines`: one compact line, for JSON-lines output); a NaN or infinity anywhere is our
    bug and fails here rather than reaching a reader."""
    try:
        if lines:
            return json.dumps(obj, allow_nan=False, separators=(",", ":"))
        return json.dumps(obj, indent=2, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"refusing to write a non-finite number as JSON ({e})") from None
