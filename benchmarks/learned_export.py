"""How close an `edgeface quantize` checkpoint and its exports stay to the fp32 model: mean and min cosine
over ~500 LFW test-fold images (every k-th of the sorted unique images of pairs folds 6-10, aligned112).

The checkpoint runs as PyTorch fake-quant, the artifacts through edgeface.runtime, all on the same crops
through the same face interface (`embed`) that `edgeface eval` uses.

    PYTHONPATH=../shared/models/edgeface_xs python benchmarks/learned_export.py \\
        --model edgeface_xs:edgeface_xs --weights ../shared/models/edgeface_xs/edgeface_xs.pt \\
        --checkpoint xs_q.pt xs_art/edgeface_xs_int8.onnx xs_art/edgeface_xs_int8.tflite
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", help="the fp32 weights (the reference; default: the model's own)")
    ap.add_argument("--checkpoint", help="an `edgeface quantize` checkpoint, run as fake-quant")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("artifacts", nargs="*")
    a = ap.parse_args()

    from edgeface.runtime.preprocess import read_image

    from edgeface.data.lfw import TEST_FOLDS, read_pairs, select_folds
    from edgeface.eval.load import open_model

    pairs = select_folds(read_pairs(LFW / "pairs.txt"), TEST_FOLDS)
    names = sorted({n for p in pairs for n in (p.left, p.right)})
    chosen = names[:: max(1, len(names) // a.images)][: a.images]
    crops = [read_image(LFW / "aligned112" / n) for n in chosen]

    def embed(ref: str, weights: str | None = None) -> np.ndarray:
        net = open_model(ref, weights, threads=1).net
        e = np.concatenate([net.embed(crops[i : i + 32]) for i in range(0, len(crops), 32)])
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    fp32 = embed(a.model, a.weights)
    rows = ([(f"checkpoint {a.checkpoint} (fake-quant)", a.model, a.checkpoint)] if a.checkpoint else []) + [
        (art, art, None) for art in a.artifacts
    ]
    print(f"{a.model}: {len(crops)} LFW test-fold images, cosine to the fp32 weights {a.weights}\n")
    ck = embed(a.model, a.checkpoint) if a.checkpoint else None
    print("| model | mean cosine | min cosine | to the checkpoint, mean / min |\n|---|---:|---:|---:|")
    for label, ref, weights in rows:
        e = ck if weights else embed(ref, weights)
        cos = np.sum(e * fp32, axis=1)
        to_ck = "" if ck is None or weights else "{:.5f} / {:.5f}".format(*_mean_min(np.sum(e * ck, axis=1)))
        print(f"| {label} | {cos.mean():.5f} | {cos.min():.5f} | {to_ck} |")


def _mean_min(cos: np.ndarray) -> tuple[float, float]:
    return float(cos.mean()), float(cos.min())


if __name__ == "__main__":
    main()
