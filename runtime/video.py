"""Frames in from OpenCV's VideoCapture, events and an annotated video out, and the loop between them.

Outputs are complete whatever ends the loop (end of the video, `max_frames`, Ctrl-C or SIGTERM): the
annotated video and an events file are written under temporary names beside their destinations and
renamed only once closed, so the destination path holds either the whole output or nothing. Events on
stdout are flushed one line at a time, each line a whole JSON document.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
from edgeface.runtime.watch import Event, Watcher

from edgeface.errors import EdgefaceError
from edgeface.io import check_output_file, os_errors, os_reason, printable

FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}  # codecs opencv-python's FFmpeg always has


def _quiet_opencv() -> None:
    """OpenCV's own warnings (V4L2 probing a missing camera, FFmpeg on a truncated file) would add lines
    to stderr around our single error line; errors we turn into messages ourselves. FFmpeg's log level
    is read by OpenCV when its backend starts (first capture), so it is set before any; a value the user
    exported is kept."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - very old OpenCV
        pass


class VideoSource:
    """A camera (`camera=N`, V4L2 on Linux) or a video file, read frame by frame with timestamps."""

    def __init__(
        self,
        camera: int | None = None,
        video: str | os.PathLike[str] | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        if (camera is None) == (video is None):
            raise EdgefaceError("give exactly one of --camera N or --video FILE")
        _quiet_opencv()
        self.is_camera = camera is not None
        if camera is not None:
            if camera < 0:
                raise EdgefaceError(f"camera index must be >= 0, got {camera}")
            self.name = f"camera {camera}"
            dev = Path(f"/dev/video{camera}")
            if sys.platform.startswith("linux") and not dev.exists():
                raise EdgefaceError(f"camera {camera} not found ({dev} does not exist)")
            self._cap = cv2.VideoCapture(camera)
            if width and height:
                self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if not self._cap.isOpened():
                raise EdgefaceError(f"cannot open camera {camera} (busy, or not a capture device)")
        else:
            path = Path(video)  # type: ignore[arg-type]
            self.name = printable(path)
            if not path.exists():
                raise EdgefaceError(f"video not found: {self.name}")
            if not path.is_file():
                raise EdgefaceError(f"not a video file: {self.name}")
            self._cap = cv2.VideoCapture(str(path))
            if not self._cap.isOpened():
                raise EdgefaceError(
                    f"cannot read video {self.name} (not a video, truncated, or a codec OpenCV lacks)"
                )
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0
        count = float(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        self.frame_count = int(count) if not self.is_camera and math.isfinite(count) and count > 0 else None
        self.frames_read = 0
        self._t0: float | None = None
        self._first = self._read()
        if self._first is None:
            self.close()
            if self.is_camera:
                raise EdgefaceError(f"{self.name} gives no frames")
            raise EdgefaceError(f"cannot read video {self.name} (no decodable frame: corrupt or truncated)")

    def _read(self) -> tuple[np.ndarray, float] | None:
        try:
            ok, frame = self._cap.read()
        except cv2.error:
            return None
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        index = self.frames_read
        self.frames_read += 1
        if self.is_camera:
            now = time.monotonic()
            self._t0 = now if self._t0 is None else self._t0
            return frame, now - self._t0
        # a file's own timeline: its frame rate where declared, else the container's position
        t = index / self.fps if self.fps else self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1e3
        return frame, float(t) if math.isfinite(t) else float(index)

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next (BGR frame, seconds) or None at the end."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._read()

    def ended_early(self) -> bool:
        """A file that stopped before the frame count its header declares (truncated or damaged)."""
        return self.frame_count is not None and self.frames_read < self.frame_count

    def close(self) -> None:
        self._cap.release()


class AtomicOutput:
    """A temporary name beside `path`, renamed to `path` on `commit`; removed if never committed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_output_file(self.path)
        if self.path.exists() and not self.path.is_file():
            raise EdgefaceError(f"cannot write {printable(self.path)}: not a regular file")
        with os_errors("write", self.path):
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=f".tmp{self.path.suffix}"
            )
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        with os_errors("write", self.path):
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class AnnotatedVideo:
    """Frames with boxes, names, scores and fps, written by cv2.VideoWriter (MJPG .avi/.mkv, mp4v .mp4)."""

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.out = AtomicOutput(path)
        fourcc = FOURCC.get(self.out.path.suffix.lower())
        if fourcc is None:
            self.out.discard()
            raise EdgefaceError(
                f"annotated video {self.out.path}: use one of {', '.join(sorted(FOURCC))} as its extension"
            )
        self.size = size
        self._writer = cv2.VideoWriter(str(self.out.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            self.out.discard()
            raise EdgefaceError(f"cannot write video {self.out.path} ({fourcc} through OpenCV)")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:  # a camera may change resolution mid-stream
            frame = cv2.resize(frame, self.size)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self._writer.release()
        if self.frames:
            self.out.commit()
        else:
            self.out.discard()


class ReaderGone(Exception):
    """The events' reader closed its end of the pipe: stop watching, finish the outputs."""


class EventSink:
    """JSON lines to stdout (flushed per line), to a file (complete on close, then renamed in place), or
    to an existing non-file path such as /dev/null or a FIFO (written line by line)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, stream: TextIO | None = None) -> None:
        self.out: AtomicOutput | None = None
        self._own = False
        if path is None or str(path) == "-":
            self._f: TextIO = stream or sys.stdout
        elif Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
            with os_errors("write", path):  # /dev/null, a FIFO: a stream, written line by line
                self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115
            self._own = True
        else:
            self.out = AtomicOutput(path)
            self._f = open(self.out.tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.name = "standard output" if path is None or str(path) == "-" else printable(path)
        self.lines = 0
        self.reader_gone = False

    def __call__(self, event: Event) -> None:
        if self.reader_gone:
            return
        try:
            self._f.write(json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n")
            self._f.flush()
        except BrokenPipeError:
            # `edgeface watch ... | head`: the reader has what it wanted. Point the stream at /dev/null so
            # the interpreter's own flush at exit stays quiet, and stop the loop like Ctrl-C would.
            self.reader_gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._f.fileno())
            os.close(devnull)
            raise ReaderGone from None
        except OSError as e:  # a full disk, /dev/full
            raise EdgefaceError(f"cannot write events to {self.name}: {os_reason(e)}") from None
        self.lines += 1

    def close(self) -> None:
        if self.out is not None:
            self._f.close()
            self.out.commit()
        elif self._own:
            self._f.close()

    def discard(self) -> None:
        if self.out is not None:
            self._f.close()
            self.out.discard()
        elif self._own:
            self._f.close()


def annotate(frame: np.ndarray, watcher: Watcher, fps: float | None) -> np.ndarray:
    """A copy of `frame` with each track's box (green: identified, orange: unknown), name and score."""
    out = frame.copy()
    for tr in watcher.tracker.tracks:
        if not tr.visible:
            continue
        name, score = watcher.label(tr)
        x, y, w, h = (int(round(v)) for v in tr.box)
        colour = (0, 200, 0) if name != "unknown" else (0, 165, 255)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 2)
        text = f"#{tr.id} {name}" + (f" {score:.2f}" if score is not None else "")
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        tx = max(0, min(x, out.shape[1] - tw))
        cv2.putText(out, text, (tx, max(12, y - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    if fps is not None and math.isfinite(fps):
        cv2.putText(
            out, f"{fps:.1f} fps", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
    return out


def run(
    source: VideoSource,
    watcher: Watcher,
    emit: Callable[[Event], None],
    video_out: str | os.PathLike[str] | None = None,
    max_frames: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> Event:
    """Read, watch, emit and annotate until the source ends, `max_frames`, or Ctrl-C / SIGTERM.

    Returns the summary event (also emitted last). Ctrl-C is a normal way to stop a camera, so it ends
    the loop like the end of a file: open tracks are closed, outputs completed, `stop` says "interrupt".
    In the main thread the signal only raises a flag checked between frames, so a frame's events and its
    annotated copy are never cut in half; a second Ctrl-C stops at once (KeyboardInterrupt, still
    handled here). Elsewhere (another thread) a KeyboardInterrupt ends the loop where it lands.
    """
    clock = watcher.clock

    gone: list[bool] = []

    def out(event: Event) -> None:  # every line carries the wall-clock time it was produced at
        try:
            emit({**event, "time": round(time.time(), 3)})
        except ReaderGone:
            gone.append(True)

    writer: AnnotatedVideo | None = None
    stop = "end"
    frames = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fps_window: list[float] = []
    requested: list[int] = []

    def request_stop(signum: int, frame: Any) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    try:
        try:
            while max_frames is None or frames < max_frames:
                if requested or gone:
                    stop = "interrupt" if requested else "reader-gone"
                    break
                with clock.stage("read"):
                    item = source.read()
                if item is None:
                    break
                frame, t = item
                for event in watcher.process(frame, t):
                    out(event)
                if video_out is not None:
                    now = time.perf_counter()
                    fps_window = [*fps_window[-29:], now]
                    fps = (len(fps_window) - 1) / (now - fps_window[0]) if len(fps_window) > 1 else None
                    with clock.stage("annotate"):
                        if writer is None:
                            rate = source.fps or 15.0
                            writer = AnnotatedVideo(video_out, rate, (frame.shape[1], frame.shape[0]))
                        writer.write(annotate(frame, watcher, fps))
                frames += 1
            else:
                stop = "interrupt" if requested else "reader-gone" if gone else "max-frames"
        except KeyboardInterrupt:
            stop = "interrupt"
        if stop == "end" and source.ended_early():
            stop = "truncated"
            if warn:
                warn(
                    f"{source.name} ended at frame {source.frames_read} of the {source.frame_count} its "
                    "header declares (truncated or damaged); results cover the frames read"
                )
        for event in watcher.finish():
            out(event)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    summary: Event = {
        "event": "summary",
        "source": source.name,
        "stop": stop,
        "frames": frames,
        "seconds": round(wall, 3),
        "fps": round(frames / wall, 2) if wall > 0 else None,
        "cpu_ms_per_frame": round(cpu * 1e3 / frames, 3) if frames else None,
        "detect_every": watcher.config.detect_every,
        "embeddings": watcher.embeddings,
        "tracks": watcher.tracker.started,
        "stages": clock.summary(frames),
        "annotated_video": str(writer.out.path) if writer is not None and writer.frames else None,
        "annotated_frames": writer.frames if writer is not None else 0,
    }
    out(summary)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few human lines (stderr of the CLI)."""
    lines = [
        f"{printable(summary['source'])}: {summary['frames']} frames in {summary['seconds']:.2f} s "
        f"({summary['fps'] or 0:.1f} fps, {summary['cpu_ms_per_frame'] or 0:.1f} ms CPU/frame), "
        f"{summary['tracks']} track(s), {summary['embeddings']} embedding(s), stopped by {summary['stop']}"
    ]
    for stage, s in summary["stages"].items():
        lines.append(
            f"  {stage:<9} {s['ms_per_call']:8.2f} ms x {s['calls']:<6} = {s['ms_per_frame']:7.2f} ms/frame "
            f"(CPU {s['cpu_ms_per_frame']:.2f})"
        )
    return lines
