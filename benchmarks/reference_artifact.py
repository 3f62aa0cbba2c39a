"""Make a runnable fp32 artifact from ../shared's reference ONNX: a copy plus a sidecar spec whose
threshold is calibrated on LFW compression-split pairs (never the test folds).

Used by the runtime tests and benchmarks until the exporter's own artifacts exist, and as the fp32 row of
docs/runtime.md.

    python benchmarks/reference_artifact.py OUT_DIR [--identities N]
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import numpy as np
from edgeface.runtime.backends import artifact_embedder, load_artifact

from edgeface.data.lfw import compression_split
from edgeface.eval.verification import best_threshold, cosine_scores
from edgeface.spec import ModelSpec, write_spec_json

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_ONNX = SHARED / "models" / "mobilefacenet_ms1m.reference.onnx"
LFW = SHARED / "data" / "lfw"
REFERENCE_SPEC = ModelSpec(
    name="mobilefacenet",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    embedding_dim=128,
    provenance={"source": "shared/models/mobilefacenet_ms1m.reference.onnx"},
)


def calibration_pairs(max_identities: int | None, seed: int = 0) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Images, index pairs and labels: one genuine pair per identity with >= 2 images (first two images),
    and as many impostor pairs drawn at random between those images. Compression split only."""
    by_id: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by_id.setdefault(p.parent.name, []).append(p)
    ids = sorted(n for n, ps in by_id.items() if len(ps) >= 2)
    rng = random.Random(seed)
    if max_identities is not None and max_identities < len(ids):
        ids = sorted(rng.sample(ids, max_identities))
    images = [p for n in ids for p in by_id[n][:2]]
    genuine = [(2 * i, 2 * i + 1) for i in range(len(ids))]
    impostor: set[tuple[int, int]] = set()
    while len(impostor) < len(genuine):
        a, b = rng.sample(range(len(ids)), 2)
        impostor.add((2 * a + rng.randrange(2), 2 * b + rng.randrange(2)))
    pairs = np.array(genuine + sorted(impostor))
    labels = np.array([True] * len(genuine) + [False] * len(impostor))
    return images, pairs, labels


def make_reference_artifact(out_dir: str | Path, max_identities: int | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mobilefacenet_ms1m_fp32.onnx"
    shutil.copyfile(REFERENCE_ONNX, path)
    write_spec_json(REFERENCE_SPEC, path.with_name(path.name + ".json"))  # uncalibrated, to embed with
    images, pairs, labels = calibration_pairs(max_identities)
    emb = artifact_embedder(load_artifact(path), progress="calibrate")(images)
    scores = cosine_scores(emb[pairs[:, 0]], emb[pairs[:, 1]])
    thr = best_threshold(scores, labels)
    spec = REFERENCE_SPEC.replace(
        threshold=round(thr, 4),
        provenance={
            **REFERENCE_SPEC.provenance,
            "threshold": f"best accuracy on {len(labels)} LFW "
            f"compression-split pairs ({int(labels.sum())} genuine), no flip",
        },
    )
    write_spec_json(spec, path.with_name(path.name + ".json"))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--identities", type=int, default=None, help="subset of identities (default: all 826)")
    a = ap.parse_args()
    p = make_reference_artifact(a.out_dir, a.identities)
    print(p, "threshold", load_artifact(p).spec.threshold)
