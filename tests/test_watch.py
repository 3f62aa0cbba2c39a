"""`edgeface watch` and `edgeface.runtime.watch.Watcher` on videos made from real LFW faces.

The acceptance of issue 13: every track gets the right enrolled identity, or none (unknown) for the
person who is not enrolled, with no identity switch inside a track, and every event line is valid JSON.
The artifact is the shared reference MobileFaceNet with a threshold calibrated on compression-split pairs
(tests/test_runtime_support.py); the gallery is made with `edgeface enroll` from other photos of the same
people than the videos show.
"""

from __future__ import annotations

import collections
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.detect import Face, YuNetDetector
from edgeface.runtime.gallery import Gallery
from edgeface.runtime.track import Tracker, iou
from edgeface.runtime.watch import WatchConfig, Watcher

from benchmarks.synthetic_video import Person, Scene, who
from edgeface.cli.main import main
from tests.test_runtime_support import raw, reference_artifact
from tests.test_watch_support import ENROLLED, STRANGER, main_scene


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_events(text: str) -> list[dict]:
    """Every line one JSON object; NaN/Infinity (which Python's json would accept) fail."""
    lines = text.splitlines()
    assert lines, "no events"
    return [json.loads(line, parse_constant=_no_constant) for line in lines]


@pytest.fixture(scope="module")
def model() -> str:
    return str(reference_artifact())


@pytest.fixture(scope="module")
def gallery(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("watch") / "people.sqlite"
    for name, photos in ENROLLED.items():
        code = main(
            ["enroll", "--name", name, *(str(raw(name, i)) for i in photos), "--model", model]
            + ["--gallery", str(path)]
        )
        assert code == 0
    return path


@pytest.fixture(scope="module")
def main_video(tmp_path_factory) -> Path:
    return main_scene().write(tmp_path_factory.mktemp("video") / "main.avi")


def check_tracks(events: list[dict], scene: Scene) -> dict[int, str | None]:
    """Each track's person (from where it started), checked against the identity it was given."""
    starts = {e["track"]: e for e in events if e["event"] == "track_start"}
    ends = {e["track"]: e for e in events if e["event"] == "track_end"}
    assert set(starts) == set(ends), "every started track ends"
    person = {}
    for tid, s in starts.items():
        person[tid] = who(scene, s["frame"], tuple(s["box"]))
        assert person[tid] is not None, f"track {tid} started on no face: {s}"
    for tid, end in ends.items():
        named = [e["identity"] for e in events if e["event"] == "identity" and e["track"] == tid]
        assert all(n is not None for n in named) and len(named) <= 1, f"identity switch in {tid}: {named}"
        assert end["identity_switches"] == 0
        expected = None if person[tid] == STRANGER else person[tid]
        assert end["identity"] == expected, (tid, person[tid], end)
    seen = collections.Counter(p for p in person.values())
    for name in [*ENROLLED, STRANGER]:
        if any(p.name == name for p in scene.people):
            assert seen[name] >= 1, f"{name} was never tracked"
    for name in ENROLLED:  # every enrolled person on screen was named by at least one track
        if any(p.name == name for p in scene.people):
            assert any(ends[t]["identity"] == name for t in ends if person[t] == name), name
    return person


def test_watch_cli_identifies_every_track(model, gallery, main_video, tmp_path, capsys) -> None:
    events_path, annotated = tmp_path / "events.jsonl", tmp_path / "annotated.avi"
    argv = ["watch", "--model", model, "--video", str(main_video), "--gallery", str(gallery)]
    code = main([*argv, "--events", str(events_path), "--out-video", str(annotated)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == ""  # events went to the file
    events = parse_events(events_path.read_text())
    summary = events[-1]
    assert summary["event"] == "summary" and summary["stop"] == "end" and summary["frames"] == 70
    assert {"detect", "track", "quality", "embed", "match", "read", "annotate"} <= set(summary["stages"])
    assert summary["fps"] > 0 and summary["cpu_ms_per_frame"] > 0
    person = check_tracks(events[:-1], main_scene())
    assert len(person) <= 6  # four people on screen; a cut may not split more than needed
    # the quality gate worked: the blurred and dark frames of the first two people were refused
    refused = {person[e["track"]]: e["refused_views"] for e in events if e["event"] == "track_end"}
    assert refused["Kevin_Costner"] >= 3 and refused["Jimmy_Carter"] >= 2, refused
    # the annotated copy is a complete video: every frame, readable
    cap = cv2.VideoCapture(str(annotated))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 70 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 320
    assert "70 frames" in err and "fps" in err  # the human summary on stderr
    # stdout mode: the same events, one JSON document per line
    code = main([*argv, "--max-frames", "12"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = parse_events(out)
    assert lines[-1]["stop"] == "max-frames" and lines[-1]["frames"] == 12


@pytest.mark.parametrize(
    "config",
    [
        # the scene-cut detector off: the change of face inside a box must split the track by itself
        WatchConfig(cut_ncc=-1.0),
        # detect every frame, no optical flow: the baseline `watch` is compared with
        WatchConfig(detect_every=1, flow=False),
    ],
    ids=["no-cut-detector", "detect-every-frame"],
)
def test_watcher_api_frame_by_frame(model, gallery, config) -> None:
    """Frames passed in one by one (as picamera2 would); each visible track box checked every frame."""
    scene = main_scene()
    with Gallery(gallery, create=False) as g:
        index = g.matrix()
    w = Watcher(load_artifact(model), YuNetDetector(), index, config=config)
    events, on = [], collections.defaultdict(list)
    for f in range(scene.frames):
        events += w.process(scene.frame(f), f / scene.fps)
        for tr in w.tracker.tracks:
            if tr.visible:
                on[tr.id].append(who(scene, f, tuple(tr.box)))
    events += w.finish()
    assert parse_events("\n".join(json.dumps(e, allow_nan=False) for e in events))
    person = check_tracks(events, scene)
    for tid, seen in on.items():
        wrong = [p for p in seen if p != person[tid]]
        assert len(wrong) <= 3, f"track {tid} ({person[tid]}) drawn on {collections.Counter(seen)}"
    reasons = collections.Counter(e["reason"] for e in events if e["event"] == "track_end")
    if config.cut_ncc < -0.99:
        assert reasons["split"] >= 1 and reasons["cut"] == 0, reasons
    assert w.embeddings <= 4 * len(person) + 6  # embeds on arrival and on better views, not every frame


def test_two_people_cut_to_one_and_scaling(model, gallery) -> None:
    """A second video: a person alone shrinking from 150 to 60 px, then a cut (new background) to two
    people side by side, one of whom is a stranger."""
    scene = Scene(
        people=[
            Person("Benjamin_Netanyahu", 5, range(0, 30), lambda f: (100 + f, 40 + f, 150 - 3 * f)),
            Person("Kevin_Costner", 2, range(30, 55), lambda f: (20 + 0.5 * (f - 30), 60, 110)),
            Person(STRANGER, 3, range(30, 55), lambda f: (180, 50 + 0.5 * (f - 30), 115)),
        ],
        frames=55,
    )
    scene_b = Scene(people=scene.people, frames=55, background_seed=1)
    with Gallery(gallery, create=False) as g:
        index = g.matrix()
    w = Watcher(load_artifact(model), YuNetDetector(), index)
    events = []
    for f in range(scene.frames):
        frame = (scene if f < 30 else scene_b).frame(f)
        events += w.process(frame, f / scene.fps)
    events += w.finish()
    check_tracks(events, scene)
    assert any(e["event"] == "track_end" and e["reason"] == "cut" for e in events)


# --- tracker units --------------------------------------------------------------------------------------
def test_degenerate_detections_never_start_tracks() -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    good_lm = np.array([[130, 100], [170, 100], [150, 120], [135, 140], [165, 140]], np.float64)
    bad = [
        Face((np.nan, 10.0, 50.0, 50.0), good_lm, 0.9),
        Face((10.0, 10.0, np.inf, 50.0), good_lm, 0.9),
        Face((100.0, 80.0, 0.0, 60.0), good_lm, 0.9),  # zero area
        Face((400.0, 300.0, 60.0, 60.0), good_lm + 300, 0.9),  # outside the frame
        Face((120.0, 80.0, 60.0, 70.0), good_lm * np.nan, 0.9),  # NaN landmarks
        Face((120.0, 80.0, 60.0, 70.0), good_lm, float("nan")),
    ]
    t = Tracker()
    up = t.step(frame, 0, bad)
    assert not up.started and not t.tracks
    up = t.step(frame, 1, [*bad, Face((120.0, 80.0, 60.0, 70.0), good_lm, 0.9)])
    assert len(up.started) == 1


def test_optical_flow_carries_a_moving_face() -> None:
    """Detect once, then follow the face by flow alone for 8 frames; it ends where the detector finds it."""
    scene = Scene([Person("Jimmy_Carter", 5, range(0, 20), lambda f: (20 + 3 * f, 40 + f, 100 + f))], 20)
    det = YuNetDetector()
    t = Tracker()
    t.step(scene.frame(0), 0, det.detect(scene.frame(0)))
    (track,) = t.tracks
    start = track.box.copy()
    for f in range(1, 9):
        t.step(scene.frame(f), f, None)
    carried = track.box.copy()
    found = det.detect(scene.frame(8))[0]
    assert iou(carried, np.asarray(found.box)) > 0.75, (start, carried, found.box)
    assert iou(start, np.asarray(found.box)) < iou(carried, np.asarray(found.box))
    assert not track.flow_lost
    # without flow the box stays where it was detected
    t2 = Tracker(flow=False)
    t2.step(scene.frame(0), 0, det.detect(scene.frame(0)))
    for f in range(1, 9):
        t2.step(scene.frame(f), f, None)
    np.testing.assert_allclose(t2.tracks[0].box, start)


def test_watch_modules_import_no_training_side() -> None:
    targets = [f"edgeface.runtime.{m}" for m in ("quality", "track", "watch", "video")] + [
        "edgeface.cli.watch_cmd"
    ]
    code = (
        f"import sys, {', '.join(targets)}\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'tensorflow') or "
        "m.startswith(('edgeface.models', 'edgeface.compress', 'edgeface.eval', 'edgeface.converters'))]\n"
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_events_are_finite_json() -> None:
    from edgeface.runtime.watch import _clean

    e = _clean({"event": "x", "score": float("nan"), "t": float("inf"), "box": [1.0, float("-inf")], "n": 3})
    assert e == {"event": "x", "score": None, "t": None, "box": [1.0, None], "n": 3}
    assert not math.isnan(json.loads(json.dumps(e, allow_nan=False))["n"])


def test_watch_settings_are_validated() -> None:
    from edgeface.errors import EdgefaceError

    WatchConfig(detect_every=1, flow=False)
    for bad in (
        {"detect_every": 2.5},
        {"detect_every": True},
        {"detect_every": 0},
        {"reembed_gain": float("nan")},
        {"cut_ncc": 2.0},
        {"iou_threshold": 0.0},
    ):
        with pytest.raises(EdgefaceError):
            WatchConfig(**bad)
