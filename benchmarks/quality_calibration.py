"""Where the quality gate's default thresholds come from: the 60 LFW raw_sample photos, as they are and
degraded (Gaussian blur sigma 3, shrunk to 60 px on a 250 px canvas, exposure x0.15).

For each condition: how many faces the detector found, each measurement's min / median / max, and how many
faces the default gate passes; then the original photos the gate refuses, with why.

    python benchmarks/quality_calibration.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.detect import YuNetDetector
from edgeface.runtime.quality import QualityThresholds, assess

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "raw_sample"


def tiny(img: np.ndarray) -> np.ndarray:
    canvas = np.full_like(img, 128)
    canvas[95:155, 95:155] = cv2.resize(img, (60, 60), interpolation=cv2.INTER_AREA)
    return canvas


CONDITIONS = {
    "original": lambda img: img,
    "blur sigma 3": lambda img: cv2.GaussianBlur(img, (0, 0), 3.0),
    "60 px photo": tiny,
    "exposure x0.15": lambda img: (img * 0.15).astype(np.uint8),
}
MEASURES = ("size", "sharpness", "yaw", "roll", "detector_score", "brightness", "score")


def main() -> None:
    cv2.setNumThreads(1)
    det = YuNetDetector()
    t = QualityThresholds()
    photos = sorted(RAW.glob("*/*.jpg"))
    print(f"<!-- python benchmarks/quality_calibration.py ({len(photos)} photos; defaults {t}) -->")
    print("| condition | faces found | passed | " + " | ".join(MEASURES) + " |")
    print("|---|---:|---:|" + "---|" * len(MEASURES))
    refused_originals = []
    for cond, make in CONDITIONS.items():
        rows = []
        for p in photos:
            img = make(cv2.imread(str(p)))
            faces = det.detect(img)
            if not faces:
                continue
            q = assess(img, det.refine(img, faces[0]), t)
            rows.append(q)
            if cond == "original" and not q.passed:
                refused_originals.append(f"{p.stem}: {q.describe()}")
        cells = []
        for m in MEASURES:
            v = np.array([getattr(q, m) for q in rows])
            cells.append(f"{v.min():.2f} / {np.median(v):.2f} / {v.max():.2f}")
        print(f"| {cond} | {len(rows)} | {sum(q.passed for q in rows)} | " + " | ".join(cells) + " |")
    print("\ncells: min / median / max. Originals refused by the default gate:")
    for line in refused_originals or ["(none)"]:
        print(f"- {line}")


if __name__ == "__main__":
    main()
