"""How much of a freshly pruned MobileFaceNet's damage is stale BatchNorm statistics?

Prunes the real model (../shared/models/mobilefacenet_ms1m.pt) 30 % with each importance / ratio mode and
prints the mean cosine between pruned and original embeddings of 64 compression-split faces, before and
after `recalibrate_bn` on 192 other compression-split faces. No fine-tuning. Usage:

    python benchmarks/prune_bn_recalibration.py [--ratio 0.3]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeface.compress.data import face_loader
from edgeface.compress.prune import prune_model, recalibrate_bn
from edgeface.data.folders import compression_images
from edgeface.models.loading import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    args = parser.parse_args()
    loaded = load_model("mobilefacenet", SHARED / "models" / "mobilefacenet_ms1m.pt")
    images = compression_images(SHARED / "data" / "lfw")
    held_out = next(iter(face_loader(images[-64:], loaded.spec, batch_size=64, shuffle=False)))
    with torch.no_grad():
        reference = F.normalize(loaded.model(held_out), dim=1)

    def agreement(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((F.normalize(model.eval()(held_out), dim=1) * reference).sum(1).mean())

    print("| importance | ratio mode | MACs change | params change | cos before BN recal. | after |")
    print("|---|---|---:|---:|---:|---:|")
    for importance, global_pruning in (("l2", False), ("l2", True), ("bn", False), ("bn", True)):
        model = copy.deepcopy(loaded.model)
        result = prune_model(model, loaded.spec, args.ratio, importance, global_pruning, progress=False)
        before = agreement(model)
        recalibrate_bn(model, images[:192], loaded.spec)
        mode = "global" if global_pruning else "per-layer"
        print(
            f"| {importance} | {mode} | {-result.macs_reduction * 100:.1f} % | "
            f"{-result.params_reduction * 100:.1f} % | {before:.3f} | {agreement(model):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
