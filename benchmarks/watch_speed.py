"""What `edgeface watch` costs per frame on a 640x480 video, one thread, and what tracking saves.

Builds a 20 s 640x480 video at 15 fps from LFW raw photos (benchmarks/synthetic_video.py: two people
moving and scaling, then a cut to an enrolled person and a stranger), enrolls the three enrolled people
from other photos, then runs the real loop (`edgeface.runtime.video.run`: decode, detect, track,
quality, embed, match) with the detector on every frame and on every k-th frame with optical flow in
between. Variants are interleaved round by round (a shared machine's load hits all alike); CPU time per
frame comes from time.process_time (all threads of the process), which contention inflates far less
than wall time. Also checks every variant names its tracks correctly.

    python benchmarks/watch_speed.py --model /tmp/watch_art/mobilefacenet_int8.onnx [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.detect import YuNetDetector
from edgeface.runtime.gallery import Gallery, ModelTag
from edgeface.runtime.pipeline import Pipeline
from edgeface.runtime.video import VideoSource, run
from edgeface.runtime.watch import WatchConfig, Watcher
from synthetic_video import Person, Scene, raw, who

ENROLLED = {"Jimmy_Carter": (2, 3), "Kevin_Costner": (1, 3), "Benjamin_Netanyahu": (1, 2)}
STRANGER = "Jose_Manuel_Durao_Barroso"
STAGES = ("read", "detect", "track", "quality", "embed", "match")


def scene() -> Scene:
    def swing(f: int, period: float, amp: float) -> float:
        return amp * math.sin(2 * math.pi * f / period)

    return Scene(
        people=[
            Person(
                "Jimmy_Carter",
                5,
                range(0, 150),
                lambda f: (80 + swing(f, 90, 60), 120, 200 + swing(f, 70, 30)),
            ),
            Person(
                "Kevin_Costner",
                5,
                range(0, 150),
                lambda f: (380 + swing(f, 120, 40), 100 + swing(f, 60, 20), 210),
            ),
            Person(
                "Benjamin_Netanyahu",
                4,
                range(150, 300),
                lambda f: (100 + swing(f, 100, 70), 90, 230 + swing(f, 80, 20)),
            ),
            Person(STRANGER, 1, range(150, 300), lambda f: (400 + swing(f, 110, 50), 140, 200)),
        ],
        frames=300,
        size=(640, 480),
        fps=15.0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="int8 artifact (.onnx or .tflite)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", default="1,3,5", help="detect-every values to compare (1 = baseline)")
    ap.add_argument(
        "--detect-side", type=int, default=640, help="YuNet input size limit (watch --detect-side)"
    )
    a = ap.parse_args()
    cv2.setNumThreads(1)
    every = [int(v) for v in a.every.split(",")]
    sc = scene()
    with tempfile.TemporaryDirectory() as tmp:
        video = sc.write(Path(tmp) / "watch640.avi")
        artifact = load_artifact(a.model, num_threads=1)
        detector = YuNetDetector(max_side=a.detect_side)
        pipe = Pipeline(artifact, detector=detector, warn=lambda m: None)
        with Gallery(Path(tmp) / "g.sqlite") as g:
            tag = ModelTag.of(artifact.spec, a.model)
            for name, photos in ENROLLED.items():
                g.enroll(name, [pipe.embed_image(raw(name, i)).embedding for i in photos], tag)
            index = g.matrix()
        Watcher(artifact, detector, index).process(sc.frame(0), 0.0)  # warm up the sessions
        results: dict[int, list[dict]] = {k: [] for k in every}
        correct: dict[int, tuple[int, int]] = {}
        for _ in range(a.rounds):
            for k in every:
                w = Watcher(artifact, detector, index, config=WatchConfig(detect_every=k))
                events: list[dict] = []
                src = VideoSource(video=video)
                try:
                    summary = run(src, w, events.append)
                finally:
                    src.close()
                results[k].append(summary)
                correct[k] = _score(events, sc)
    base = np.array([s["cpu_ms_per_frame"] for s in results[every[0]]])
    print(
        f"<!-- python benchmarks/watch_speed.py --model {a.model} --rounds {a.rounds} --every {a.every} "
        f"--detect-side {a.detect_side} -->"
    )
    print(
        f"{sc.frames} frames 640x480 at {sc.fps:g} fps, {artifact.spec.precision} {Path(a.model).name} "
        f"({artifact.backend}), 1 thread; medians of {a.rounds} interleaved rounds"
    )
    print()
    head = " | ".join(f"{s}" for s in STAGES)
    print(
        f"| detect every | CPU ms/frame | vs every frame | wall fps | {head} | embeddings "
        "| tracks named right |"
    )
    print("|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|")
    for k in every:
        rs = results[k]
        cpu = np.array([s["cpu_ms_per_frame"] for s in rs])
        fps = np.median([s["fps"] for s in rs])
        stages = " | ".join(
            f"{np.median([s['stages'].get(st, {}).get('cpu_ms_per_frame', 0.0) for s in rs]):.2f}"
            for st in STAGES
        )
        ok, n = correct[k]
        print(
            f"| {k} | {np.median(cpu):.2f} | {np.median(base / cpu):.2f}x lower | {fps:.1f} | {stages} | "
            f"{int(np.median([s['embeddings'] for s in rs]))} | {ok}/{n} |"
        )
    print()
    print(
        "stage columns: CPU ms per frame (stage CPU time / frames; detect and embed run on some frames "
        "only); "
        "wall fps includes waiting for a core on a loaded machine"
    )


def _score(events: list[dict], sc: Scene) -> tuple[int, int]:
    """(tracks whose final identity is right, tracks): right = the enrolled person, or None for the
    stranger, judged from where the track started."""
    starts = {e["track"]: e for e in events if e["event"] == "track_start"}
    ends = {e["track"]: e for e in events if e["event"] == "track_end"}
    ok = 0
    for tid, s in starts.items():
        person = who(sc, s["frame"], tuple(s["box"]))
        expected = None if person == STRANGER else person
        ok += person is not None and ends[tid]["identity"] == expected and ends[tid]["identity_switches"] == 0
    return ok, len(starts)


if __name__ == "__main__":
    main()
