"""`edgeface watch` at its edges: missing camera, unreadable and truncated videos, bad options, and Ctrl-C
or SIGTERM in the middle of a run (outputs complete, never a traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from edgeface.cli.main import main
from tests.test_runtime_support import reference_artifact
from tests.test_watch import parse_events
from tests.test_watch_support import main_scene

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> str:
    return str(reference_artifact())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    scene = main_scene()
    avi = scene.write(d / "short.avi", frames=30)
    mp4 = scene.write(d / "short.mp4", "mp4v", frames=30)
    data = avi.read_bytes()
    (d / "truncated.avi").write_bytes(data[: len(data) // 2])  # header intact, frames cut
    data = mp4.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # mp4v: the index (moov) is at the end
    (d / "not_a_video.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 50)
    (d / "empty.mp4").write_bytes(b"")
    scene.write(d / "long.avi", frames=400)  # ~40 s of video: still running when interrupted
    return {p.name: p for p in d.iterdir()}


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_missing_camera_and_unreadable_videos(model, videos, tmp_path, capsys) -> None:
    cases = [
        (["--camera", "57"], "camera 57 not found"),
        (["--video", str(tmp_path / "nope.avi")], "video not found"),
        (["--video", str(tmp_path)], "video not found"),  # click refuses a folder before we see it
        (["--video", str(videos["not_a_video.avi"])], "cannot read video"),
        (["--video", str(videos["empty.mp4"])], "cannot read video"),
        (["--video", str(videos["truncated.mp4"])], "cannot read video"),
    ]
    for args, message in cases:
        events = tmp_path / "events.jsonl"
        code = main(["watch", "--model", model, *args, "--events", str(events)])
        _, err = capsys.readouterr()
        assert code == 2, (args, err)
        line = one_error(err)
        assert message in line or "is a directory" in line, (args, line)
        assert not events.exists() and not list(tmp_path.glob(".events.*"))


def test_bad_options_write_nothing(model, videos, tmp_path, capsys) -> None:
    base = ["watch", "--model", model, "--video", str(videos["short.avi"])]
    cases = [
        (["watch", "--model", model], "exactly one of --camera N or --video FILE"),
        ([*base, "--camera", "0"], "exactly one of --camera N or --video FILE"),
        ([*base, "--min-sharpness", "nan"], "--min-sharpness"),
        ([*base, "--max-roll", "-3"], "--max-roll"),
        ([*base, "--threshold", "nan"], "threshold"),
        ([*base, "--detect-every", "0"], "--detect-every"),
        ([*base, "--out-video", str(tmp_path / "a.gif")], "extension"),
        ([*base, "--events", str(tmp_path / "no" / "e.jsonl")], "does not exist"),
        ([*base, "--gallery", str(tmp_path / "none.sqlite")], "gallery not found"),
    ]
    for argv, message in cases:
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert message in one_error(err), (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_truncated_video_is_read_up_to_the_cut(model, videos) -> None:
    """In a subprocess, so OpenCV/FFmpeg's own stderr (C level) is seen too: one warning, no noise."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeface.cli.main",
            "watch",
            "--model",
            model,
            "--video",
            str(videos["truncated.avi"]),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    events = parse_events(r.stdout)
    summary = events[-1]
    assert summary["stop"] == "truncated" and 0 < summary["frames"] < 30
    warnings = [x for x in r.stderr.splitlines() if not x.startswith(("  ", str(videos["truncated.avi"])))]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "truncated" in warnings[0], r.stderr


def _start(model: str, video: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeface.cli.main", "watch", "--model", model, "--video", str(video), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_leaves_complete_outputs(model, videos, tmp_path, sig) -> None:
    annotated = tmp_path / "annotated.avi"
    if sig == signal.SIGINT:  # events on stdout: the first line says the loop is running
        p = _start(model, videos["long.avi"], "--out-video", str(annotated))
        first = p.stdout.readline()
        assert first, p.stderr.read()
    else:  # events to a file: wait for its temporary copy to fill
        events = tmp_path / "events.jsonl"
        p = _start(model, videos["long.avi"], "--out-video", str(annotated), "--events", str(events))
        deadline = time.monotonic() + 120
        while not any(f.stat().st_size for f in tmp_path.glob(".events.*")) and time.monotonic() < deadline:
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.2)
        assert not events.exists()  # not there until complete
    time.sleep(1.0)
    os.kill(p.pid, sig)
    # not communicate(): it reads the pipe's file descriptor and would miss what readline() buffered
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err
    text = first + out if sig == signal.SIGINT else events.read_text()
    lines = parse_events(text)
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["stop"] == "interrupt", summary
    assert 0 < summary["frames"] < 400
    open_tracks = {e["track"] for e in lines if e["event"] == "track_start"}
    assert open_tracks == {e["track"] for e in lines if e["event"] == "track_end"}  # all closed
    # the video holds every frame processed, all readable
    assert _frames(annotated) == summary["annotated_frames"] == summary["frames"]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["annotated.avi"] + (["events.jsonl"] if sig == signal.SIGTERM else [])
    )
    json.dumps(summary, allow_nan=False)


def test_events_to_a_device(model, videos, capsys) -> None:
    """/dev/null (or a FIFO) is written as a stream, not replaced by a renamed file."""
    code = main(["watch", "--model", model, "--video", str(videos["short.avi"]), "--events", "/dev/null"])
    out, err = capsys.readouterr()
    assert code == 0 and out == "" and "stopped by end" in err, err
    assert Path("/dev/null").is_char_device()


def test_reader_closing_the_pipe_stops_quietly(model, videos) -> None:
    """`edgeface watch ... | head -1`: the run stops, exit 0, no BrokenPipeError or traceback."""
    p = _start(model, videos["long.avi"])
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "stopped by reader-gone" in err and "Traceback" not in err and "Exception" not in err, err
