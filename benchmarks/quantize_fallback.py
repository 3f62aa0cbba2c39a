"""`edgeface quantize`'s float fallback on a plain CNN: what the numbers in docs/compression.md say.

For one checkpoint (default: the pruned mobilefacenet of docs/prune_recipes.md), w8a8 PTQ as
`edgeface quantize` runs it (MSE calibration on 512 compression-split faces, bias correction), measured as
the mean / min embedding cosine to the float model on 128 other compression-split faces (the export's
parity split):
- without the fallback (`--fallback 0`) and with it (the default), with the layers it kept float;
- the worst activation quantizers alone and the worst layers' int8 weights alone (everything else float,
  no bias correction): where the loss comes from.

    python benchmarks/quantize_fallback.py                                  # the pruned model
    python benchmarks/quantize_fallback.py --weights ../shared/models/mobilefacenet_ms1m.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from edgeface.converters.export import load_inputs, split_images

from edgeface.compress.quant.fakequant import ActQuant, QuantConv2d, QuantLinear
from edgeface.compress.quant.ptq import ptq
from edgeface.data.folders import compression_images
from edgeface.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"


def cosine(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        c = F.cosine_similarity(model(x), ref)
    return float(c.mean()), float(c.min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilefacenet")
    ap.add_argument("--weights", default=str(ROOT / "artifacts" / "prune_recipes_cos45" / "cosine.pt"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_model(args.model, args.weights)
    cal, hold = split_images(compression_images(LFW), 256, 128)
    x = torch.from_numpy(load_inputs(hold, net.spec))
    with torch.no_grad():
        ref = net.model(x)
    print(f"{args.model} {args.weights}: w8a8 PTQ (mse, 512 images), cosine to float on 128 held-out faces")
    for label, fallback in (("--fallback 0", 0.0), ("default fallback", None)):
        kw = {} if fallback is None else {"fallback": fallback}
        q = ptq(net.model, net.spec, list(cal), calibration="mse", num_images=512, progress=False, **kw)
        layers = [m for m in q.modules() if isinstance(m, QuantConv2d | QuantLinear)]
        floats = sorted(q.edgeface_quant.get("fallback") or {})
        mean, low = cosine(q, x, ref)
        print(f"  {label}: mean {mean:.4f} min {low:.4f}; {len(layers)} int8 layers; kept float: {floats}")
    q = ptq(
        net.model, net.spec, list(cal), calibration="mse", num_images=512, progress=False, fallback=0.0,
        bias_correction=False,
    )  # fmt: skip
    acts = {n: m for n, m in q.named_modules() if isinstance(m, ActQuant)}
    weights = {n: m for n, m in q.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}
    for m in acts.values():
        m.enabled = False
    for m in weights.values():
        m.quant_enabled = False
    alone = []
    for group in (acts, weights):
        for name, m in group.items():
            flag = "enabled" if group is acts else "quant_enabled"
            setattr(m, flag, True)
            alone.append((cosine(q, x, ref)[0], "activation" if group is acts else "weights", name))
            setattr(m, flag, False)
    print("  worst alone (no bias correction, everything else float):")
    for mean, kind, name in sorted(alone)[:4]:
        print(f"    {kind} {name}: mean {mean:.4f}")


if __name__ == "__main__":
    main()
