"""What detection costs: YuNet on a raw 250 px LFW photo with and without landmark refinement, and on a
4000x3000 photo (the same photo upscaled, like a 12 MP phone picture) at full size versus downscaled to
640 px as `YuNetDetector` does. Best of N runs (the minimum is the least contended figure). Also one YuNet
pass on the 250 px photo and on a 384 px refinement crop, by the runtime (ONNX Runtime, its own decoding)
and by OpenCV's cv2.FaceDetectorYN (what the runtime used before 2026-12-02), same file, one thread each.

    python benchmarks/detect_speed.py [--runs 5] [--landmarker face_landmark.tflite]

With --landmarker, a row for the face-mesh refinement (runtime.landmarks) that replaces YuNet's. The
refinement row is the shipped one (detect.REFINE_FACE_SIZES); the two-size row is the more precise option
docs/face_selection.md measures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
from edgeface.runtime.detect import YuNetDetector

PHOTO = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/lfw/raw_sample/Jimmy_Carter/Jimmy_Carter_0001.jpg"
)


def best_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description="YuNet detection cost")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--landmarker", help="face-mesh model file: also time its refinement")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    photo = cv2.imread(str(PHOTO))
    big = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    det, full = YuNetDetector(), YuNetDetector(max_side=10**6)
    face = det.detect(photo)[0]
    rows = [
        ("250x250 photo, detect", best_ms(lambda: det.detect(photo), a.runs)),
        ("250x250 photo, refine (extra)", best_ms(lambda: det.refine(photo, face), a.runs)),
        (
            "250x250 photo, refine at two sizes, 224 and 288 px (extra)",
            best_ms(lambda: det.refine(photo, face, face_sizes=(224, 288)), a.runs),
        ),
        ("4000x3000 photo, detect at full size", best_ms(lambda: full.detect(big), max(1, a.runs // 2))),
        (
            "4000x3000 photo, detect downscaled to 640 (resize included)",
            best_ms(lambda: det.detect(big), a.runs),
        ),
    ]
    opencv = cv2.FaceDetectorYN.create(str(det.path), "", (320, 320), 0.6, 0.3, 50)
    crop = cv2.resize(photo, (384, 384), interpolation=cv2.INTER_CUBIC)
    for name, image in (("250x250 photo", photo), ("384x384 refinement crop", crop)):
        rows.append(
            (
                f"{name}, one YuNet pass, ONNX Runtime (edgeface)",
                best_ms(lambda im=image: det._run(im), a.runs),
            )
        )
        opencv.setInputSize((image.shape[1], image.shape[0]))
        rows.append(
            (
                f"{name}, one YuNet pass, cv2.FaceDetectorYN",
                best_ms(lambda im=image: opencv.detect(im), a.runs),
            )
        )
    if a.landmarker:
        mesh = YuNetDetector(landmarker=a.landmarker)
        rows.insert(
            2,
            (
                "250x250 photo, refine with --landmarker (extra)",
                best_ms(lambda: mesh.refine(photo, face), a.runs),
            ),
        )
    print("| case (1 OpenCV thread) | best ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
