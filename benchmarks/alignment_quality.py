"""Alignment and landmark quality on the 60 raw LFW photos, against LFW's own landmarks and crops.

    python benchmarks/alignment_quality.py

1. Crops from landmarks.csv through our template + similarity transform vs aligned112: mean |diff| per
   photo (grey levels), and the same with the landmarks shifted by one pixel (what "off by a pixel" costs).
2. YuNet's landmarks vs landmarks.csv, as mean point distance / inter-ocular distance (IOD), for the
   detected face that is the subject: first detection and after `YuNetDetector.refine`.
3. How often the largest detected face is the subject.
tests/test_runtime_align.py asserts bounds on the same quantities.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import align_face
from edgeface.runtime.detect import YuNetDetector

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def main() -> None:
    with open(LFW / "landmarks.csv") as f:
        marks = {
            r["file"]: np.array([float(v) for v in list(r.values())[1:]]).reshape(5, 2)
            for r in csv.DictReader(f)
        }
    det = YuNetDetector()
    exact, shifted, first, refined, iods, largest, offsets = [], [], [], [], [], 0, []
    for p in sorted((LFW / "raw_sample").rglob("*.jpg")):
        rel = f"{p.parent.name}/{p.name}"
        lm, image = marks[rel], cv2.imread(str(p))
        ref = cv2.imread(str(LFW / "aligned112" / rel)).astype(np.float64)
        exact.append(np.abs(align_face(image, lm) - ref).mean())
        shifted.append(np.abs(align_face(image, lm + [1.0, 0.0]) - ref).mean())
        iod = np.linalg.norm(lm[0] - lm[1])
        iods.append(iod)
        faces = det.detect(image)
        err = [np.linalg.norm(f.landmarks - lm, axis=1).mean() / iod for f in faces]
        subject = faces[int(np.argmin(err))]
        first.append(min(err))
        offsets.append((subject.landmarks - lm) / iod)
        refined.append(np.linalg.norm(det.refine(image, subject).landmarks - lm, axis=1).mean() / iod)
        largest += err[0] == min(err)

    def stats(v: list[float]) -> str:
        return f"mean {np.mean(v):.3f}  median {np.median(v):.3f}  min {np.min(v):.3f}  max {np.max(v):.3f}"

    print(f"photos: {len(exact)}, mean IOD {np.mean(iods):.1f} px")
    print(f"crop vs aligned112, grey levels:            {stats(exact)}")
    print(f"same, landmarks shifted by 1 px:            {stats(shifted)}")
    print(f"YuNet landmarks vs csv / IOD, first:        {stats(first)}")
    print(f"YuNet landmarks vs csv / IOD, refined:      {stats(refined)}")
    print(f"largest detected face is the subject:       {largest} / {len(exact)}")
    names = ("left eye", "right eye", "nose", "left mouth", "right mouth")
    mean = np.mean(offsets, axis=0)
    print("mean YuNet - csv offset / IOD (x, y; y grows downwards), first detection:")
    for name, (dx, dy) in zip(names, mean, strict=True):
        print(f"  {name:<12} {dx:+.3f} {dy:+.3f}")


if __name__ == "__main__":
    main()
