"""All-or-nothing output: artifacts are written into a hidden staging folder beside their destination and
moved into place only when every artifact and every parity check has passed, so a failed export leaves no
partial file behind (and never replaces a good artifact from an earlier run with a bad one).

Interrupts are part of "failed": while a staging folder exists, SIGINT and SIGTERM raise `Interrupted`
(exit 130 through the CLI) and the folder is removed. The TFLite conversion runs code where an exception is
dropped: the handler often fires inside jax's garbage-collection callback, where Python prints "Exception
ignored" and carries on, so a Ctrl-C there used to end in a *successful* export with exit 0. So the signal
is recorded, never raised inside such a callback, but raised at the next Python call made outside it (a
one-shot trace function) or by a 50 ms retry timer, whichever comes first, and checked once more before
anything is moved into place; a second signal removes the staging folder and
exits at once. A folder left by a process that was killed outright (SIGKILL, power loss) is swept by the
next export into the same folder.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from edgeface.errors import EdgefaceError
from edgeface.io import os_errors, printable

STAGE_PREFIX = ".edgeface-export-"
STALE_AFTER_S = 24 * 3600  # a staging folder whose owner cannot be checked is stale after a day
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 0.05  # an interrupt swallowed by a library is raised again this often until it propagates
_OWNED = re.compile(re.escape(STAGE_PREFIX) + r"(\d+)-([0-9a-f]{8})-")


_RETRY = getattr(signal, "SIGALRM", None) if hasattr(signal, "setitimer") else None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during an export; the staging folder was removed, nothing was written."""


def check_writable_dir(outdir: Path) -> None:
    """Fail before any slow work when the output folder cannot be created or written."""
    if outdir.exists() and not outdir.is_dir():
        raise EdgefaceError(f"output path exists and is not a folder: {printable(outdir)}")
    with os_errors("create output folder", outdir):
        outdir.mkdir(parents=True, exist_ok=True)
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise EdgefaceError(f"output folder is not writable: {printable(outdir)}")


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def sweep_stale(outdir: Path) -> list[Path]:
    """Remove staging folders left in `outdir` by exports that no longer run: ours (same host) whose
    process is gone, and any other older than STALE_AFTER_S. Returns what was removed."""
    removed = []
    host, now = _host_tag(), time.time()
    try:
        entries = list(outdir.iterdir())
    except OSError:
        return removed
    for d in entries:
        if not d.name.startswith(STAGE_PREFIX) or d.is_symlink() or not d.is_dir():
            continue
        m = _OWNED.match(d.name)
        try:
            if m and m.group(2) == host:
                stale = not _alive(int(m.group(1)))
            else:
                stale = now - d.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                removed.append(d)
    return removed


class _SignalGuard:
    """SIGINT/SIGTERM -> `Interrupted` while a staging folder exists (main thread only: Python delivers
    signals there). The signal is remembered, so one swallowed by a library is raised again by `check`;
    during the final moves and the cleanup it is ignored, so they complete; a second signal removes the
    staging folder and exits at once."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.received: int | None = None
        self.quiet = False  # set for the final moves and the cleanup, which must not be cut short
        self.deferring = 0  # > 0 inside native_section(): the interrupt is raised when it ends
        self._previous: dict[int, Any] = {}
        self._tracing = False
        self._previous_trace: Any = None

    def __enter__(self) -> _SignalGuard:
        global _ACTIVE
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # started with the signal ignored (nohup, a background job): it stays so
                self._previous[s] = signal.signal(s, self._handle)
            _ACTIVE = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        self.stop_retrying()
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if _ACTIVE is self:
            _ACTIVE = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.quiet:
            return  # the last renames or the cleanup take milliseconds: let them finish
        if self.received is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            os.write(2, b"\nerror: interrupted again; stopped at once, nothing written\n")
            os._exit(128 + signum)
        self.received = signum
        if self.deferring:
            return  # raised when the native section ends (native_section)
        if _RETRY is not None and self._previous:  # SIGALRM is borrowed only once interrupted
            self._previous.setdefault(_RETRY, signal.signal(_RETRY, self._retry))
            signal.setitimer(signal.ITIMER_REAL, RETRY_S / 5, RETRY_S)
        if not _swallowed_here(frame):
            raise Interrupted(signal.Signals(signum).name)
        self._trace_until_outside()

    def _retry(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring:
            return
        if self.received is not None and not self.quiet:
            if not _swallowed_here(frame):
                raise Interrupted(signal.Signals(self.received).name)
            self._trace_until_outside()

    def _trace_until_outside(self) -> None:
        """The timer alone is not enough: a signal that arrives while a slow gc callback runs (jax's calls
        into XLA on every collection) is handled when Python code next runs, which is the next callback, so
        under steady allocation most retries were swallowed too (3.5 s in CI). A trace function sees the
        first Python call made outside the callbacks and raises there."""
        if not self._tracing:
            self._previous_trace, self._tracing = sys.gettrace(), True
            sys.settrace(self._trace)

    def _untrace(self) -> None:
        if self._tracing:
            self._tracing = False
            sys.settrace(self._previous_trace)

    def _trace(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call" or self.deferring or self.received is None:
            return None
        if self.quiet:
            self._untrace()
        elif not _swallowed_here(frame):
            self._untrace()
            raise Interrupted(signal.Signals(self.received).name)
        return None

    def stop_retrying(self) -> None:
        self._untrace()
        if _RETRY is not None and _RETRY in self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(signal.Signals(self.received).name)


def _swallowed_here(frame: FrameType | None) -> bool:
    """True where Python prints "Exception ignored" with a traceback and drops the exception: a garbage-
    collection callback, a __del__, a weakref finalizer, the unraisable-exception hook. The retry timer
    raises the interrupt a moment later instead, outside them."""
    hooks = [*gc.callbacks, sys.unraisablehook]
    codes = {getattr(getattr(h, "func", h), "__code__", None) for h in hooks}
    while frame is not None:
        code = frame.f_code
        if code in codes or code.co_name == "__del__" or code.co_filename == weakref.__file__:
            return True
        frame = frame.f_back
    return False


_ACTIVE: _SignalGuard | None = None


@contextmanager
def native_section() -> Iterator[None]:
    """A stretch of native code (the TFLite converter, quantizer and interpreter) that an exception raised
    from a signal handler must not unwind: under load a Ctrl-C landing inside litert-torch's conversion
    crashed the process (SIGSEGV, nothing printed, the staging folder left). Inside it an interrupt is only
    recorded and raised as `Interrupted` once the section returns; a second one still stops at once."""
    guard = _ACTIVE
    if guard is None:
        yield
        return
    guard.deferring += 1
    try:
        yield
    finally:
        guard.deferring -= 1
    if not guard.deferring and guard.received is not None and not guard.quiet:
        raise Interrupted(signal.Signals(guard.received).name)


@contextmanager
def staged(outdir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into `outdir`, on any error or interrupt delete
    it (nothing written)."""
    check_writable_dir(outdir)
    sweep_stale(outdir)
    with os_errors("write into output folder", outdir):
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-{_host_tag()}-", dir=outdir))
    with _SignalGuard(stage) as guard:
        try:
            yield stage
            guard.check()  # an interrupt some library caught and dropped still cancels the export
            guard.quiet = True
            # artifacts before their sidecars, so a reader that sees a sidecar finds its artifact
            files = sorted(stage.iterdir(), key=lambda p: p.suffix == ".json")
            for f in files:
                os.replace(f, outdir / f.name)
        finally:
            guard.quiet = True  # a signal now must not stop the cleanup halfway
            guard.stop_retrying()
            shutil.rmtree(stage, ignore_errors=True)
