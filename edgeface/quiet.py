"""Quiet by default: third-party chatter off at default verbosity, back on with `edgeface -v`.

A first run that prints "Failed to load ... Could not load this library", absl's "All log messages before
absl::InitializeLog()" and "INFO: Created TensorFlow Lite XNNPACK delegate" looks broken even when it
worked, and buries the one line that matters. Three kinds of noise, three mechanisms:
- Python warnings and log records from other packages: filtered here once, at CLI start (`configure`);
  edgeface's own warnings and messages are never filtered.
- Native (C++) logging that honours environment variables (TensorFlow/absl, glog): set before the
  libraries load.
- Native code that writes straight to file descriptor 2 (LiteRT's delegate banner, the converter's
  absl lines): `native_quiet()` points fd 2 at a temporary file around the few calls that do it; what was
  captured is replayed when the call fails, so a library's own explanation of an error is never lost;
  `native_silent(fd)` drops a native failure dump outright (torch's ONNX exporter prints its IR graph).
Pure stdlib, so the runtime (which imports no torch) can use it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_VERBOSE = False
_NOTES = True

# loggers of the libraries we call; their warnings are about their internals, not the user's model
THIRD_PARTY_LOGGERS = (
    "torchao",
    "torch",
    # torch's own logging setup re-levels "torch" when it loads; children it does not register keep ours
    "torch.utils._pytree",
    "torch.export",
    "torch._export",
    "torch.onnx",
    "torch.fx",
    "jax",
    "absl",
    "tensorflow",
    "litert_torch",
    "ai_edge_litert",
    "ai_edge_quantizer",
    "onnxscript",
    "onnx_ir",
    "torch_pruning",
    "matplotlib",
)
NATIVE_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow / LiteRT converter C++ logging
    "GLOG_minloglevel": "2",
    "ABSL_MIN_LOG_LEVEL": "2",
    "ORT_LOGGING_LEVEL": "3",
}


def verbose() -> bool:
    return _VERBOSE


def silence_notes(silent: bool = True) -> None:
    """`--quiet`: no `note:` lines (facts the user may want, never warnings or errors)."""
    global _NOTES
    _NOTES = not silent


def note(message: str | None) -> None:
    """One `note:` line on stderr, unless notes are silenced."""
    if message and _NOTES:
        print(f"note: {message}", file=sys.stderr, flush=True)


def configure(verbose: bool = False) -> None:
    """Set the process's verbosity once, before any heavy library is imported (the CLI does this)."""
    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        return
    for key, value in NATIVE_ENV.items():
        os.environ.setdefault(key, value)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # warnings raised from other packages' code (DeprecationWarning, FutureWarning, UserWarning ...);
    # a warning whose origin is edgeface's own code still shows
    warnings.filterwarnings("ignore", module=r"^(?!edgeface)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextmanager
def _redirected(fd: int, target: int) -> Iterator[None]:
    """Point file descriptor `fd` at `target` during the block (unless verbose), then back.

    Python's own buffered stream on that descriptor is flushed before and after, so nothing it holds lands
    on the wrong side of the switch. A process without a usable `fd` (embedded interpreters) is left as is.
    """
    stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
    if _VERBOSE:
        yield
        return
    try:
        if stream is not None:
            stream.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(target, fd)
        yield
    finally:
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, fd)
        os.close(saved)


@contextmanager
def native_quiet() -> Iterator[None]:
    """Silence what native code writes to fd 2 during the block (unless verbose); replay it on failure."""
    with tempfile.TemporaryFile() as capture:
        try:
            with _redirected(2, capture.fileno()):
                yield
        except BaseException:
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace").strip()
            if text:
                print(text, file=sys.stderr)
            raise


@contextmanager
def native_silent(fd: int) -> Iterator[None]:
    """Discard what native code writes to file descriptor `fd` during the block (unless verbose).

    For libraries whose native side prints a dump on failure that the raised exception already sums up
    (torch's TorchScript ONNX exporter writes its whole IR graph to stdout, where it would also corrupt
    `--json -` output); unlike `native_quiet` nothing is replayed.
    """
    with open(os.devnull, "wb") as sink, _redirected(fd, sink.fileno()):
        yield
