"""Is the raw-photo FRR gap of issue 15 landmark precision or chance? Sub-pixel jitter tells them apart.

An int8 network is chaotic at the scale of one grey level: landmarks that differ by 1e-4 px (two
implementations of the same detector) move embeddings by a cosine of ~0.998, enough to flip a pair that
sits at the threshold. So one count of false rejects on 120 genuine pairs carries that chance. Here every
photo's five landmarks get Gaussian noise of `--sigma` px (0.05 by default: a hundredth of a pixel-scale
landmark error, far below any detector's precision) for `--seeds` draws, and the false rejects and accepts
at the shipped threshold are counted per draw, for each landmark source:
- `csv`: the reference landmarks (landmarks.csv), aligned by the runtime;
- `yunet`: the runtime's default, YuNet with refinement, the face `--face auto` takes;
- `mesh`: with `--landmarker FILE`, the face-mesh refinement of the same face;
- `yunet+mesh`: with `--landmarker FILE`, the mean of the two (lower landmark error than either).
A source whose count never leaves its unjittered value is not at the mercy of chance; the gap between its
mean and csv's is what landmark precision costs. The pre-aligned aligned112 row (fixed images) and the
genuine pairs each source rejects are printed too.

    python benchmarks/landmark_noise.py --model ARTIFACT [--landmarker face_landmark.tflite] [--seeds 20]
"""

from __future__ import annotations

import argparse
import itertools

import cv2
import numpy as np
from edgeface.runtime.align import align_face
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.detect import YuNetDetector
from edgeface.runtime.select import select
from face_selection import LFW, RAW, reference_landmarks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--landmarker", help="face-mesh model file: also the `mesh` source")
    ap.add_argument("--sigma", type=float, default=0.05, help="landmark jitter, px (standard deviation)")
    ap.add_argument("--seeds", type=int, default=20)
    a = ap.parse_args()

    art = load_artifact(a.model, num_threads=1)
    spec, thr = art.spec, float(art.spec.threshold)
    photos = sorted(RAW.rglob("*.jpg"))
    images = [cv2.imread(str(p)) for p in photos]
    ref = reference_landmarks()
    det = YuNetDetector()
    mesh = YuNetDetector(landmarker=a.landmarker) if a.landmarker else None
    sources: dict[str, list[np.ndarray]] = {"csv": [], "yunet": [], **({"mesh": []} if mesh else {})}
    for p, im in zip(photos, images, strict=True):
        sources["csv"].append(ref[f"{p.parent.name}/{p.name}"])
        face = select(det.detect(im), "auto", im.shape[1], im.shape[0])[0]
        sources["yunet"].append(det.refine(im, face).landmarks)
        if mesh is not None:
            sources["mesh"].append(mesh.refine(im, face).landmarks)
    if mesh is not None:
        sources["yunet+mesh"] = [(y + m) / 2 for y, m in zip(sources["yunet"], sources["mesh"], strict=True)]
    error = {
        name: float(
            np.median(
                [
                    np.linalg.norm(lm - ref_lm, axis=1).mean() / np.linalg.norm(ref_lm[0] - ref_lm[1])
                    for lm, ref_lm in zip(marks, sources["csv"], strict=True)
                ]
            )
        )
        for name, marks in sources.items()
    }
    ids = [p.parent.name for p in photos]
    pairs = list(itertools.combinations(range(len(photos)), 2))
    genuine = np.array([ids[i] == ids[j] for i, j in pairs])

    def scores(crops: list[np.ndarray]) -> np.ndarray:
        e = art.embed(crops)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return np.array([e[i] @ e[j] for i, j in pairs])

    def counts(s: np.ndarray) -> tuple[int, int]:
        return int(((s < thr) & genuine).sum()), int(((s >= thr) & ~genuine).sum())

    pre = scores([cv2.imread(str(LFW / "aligned112" / p.parent.name / p.name)) for p in photos])
    print(f"{a.model}, threshold {thr:.4f}, {genuine.sum()} genuine / {(~genuine).sum()} impostor pairs")
    print(f"jitter: Gaussian, sigma {a.sigma} px per coordinate, {a.seeds} draws per source\n")
    print(
        "| landmarks | median landmark error, IOD | false rejects, unjittered | false rejects over draws: "
        "mean [min, max] | false accepts, unjittered | false accepts over draws: mean [min, max] |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    fr, fa = counts(pre)
    print(f"| pre-aligned (aligned112, fixed images) | – | {fr} | – | {fa} | – |")
    rejected: dict[str, list[str]] = {}

    def aligned(marks: list[np.ndarray], noise: float, rng: np.random.Generator) -> list[np.ndarray]:
        return [
            align_face(im, lm + rng.normal(0, noise, (5, 2)), spec.input_size, spec.crop_box())
            for im, lm in zip(images, marks, strict=True)
        ]

    for name, marks in sources.items():
        rng = np.random.default_rng(0)
        base = scores(aligned(marks, 0.0, rng))
        rejected[name] = [
            f"{photos[i].stem} / {photos[j].stem} ({base[k]:.3f})"
            for k, (i, j) in enumerate(pairs)
            if genuine[k] and base[k] < thr
        ]
        draws = np.array([counts(scores(aligned(marks, a.sigma, rng))) for _ in range(a.seeds)])
        (fr, fa), (r, c) = counts(base), (draws[:, 0], draws[:, 1])
        spread = f"{r.mean():.2f} [{r.min()}, {r.max()}] | {fa} | {c.mean():.2f} [{c.min()}, {c.max()}]"
        print(f"| {name} | {error[name]:.4f} | {fr} | {spread} |")
    print("\ngenuine pairs rejected (unjittered; pre-aligned score):")
    pre_rejected = [
        f"{photos[i].stem} / {photos[j].stem} ({pre[k]:.3f})"
        for k, (i, j) in enumerate(pairs)
        if genuine[k] and pre[k] < thr
    ]
    for name, rows in {"pre-aligned": pre_rejected, **rejected}.items():
        print(f"- {name}: {'; '.join(rows)}")


if __name__ == "__main__":
    main()
