"""Quantization of face models: PTQ, QAT with distillation, mixed precision, all as fake quantization.

Why our own fake-quant modules instead of torch.ao / convert_fx: torch.ao.quantization is deprecated and
its FX int8 convert gives wrong outputs for PReLU networks. Fake quantization keeps one float code path
whose values are exactly the integer grid's (int6 = 6-bit grid stored in int8), trains with the
straight-through estimator, and exposes every scale as data (`quant_plan`) for the exporters.

Public API (everything takes / returns ordinary nn.Modules; quantized models are torch.fx.GraphModules):

    fold_bn(model, example=None) -> GraphModule
        Float model with every BatchNorm folded (conv->BN, linear->BN1d, BN2d->flatten->linear) or, where
        folding is not exact (BN *before* a zero-padded conv, IResNet's bn1), turned into an explicit 1x1
        depthwise conv with bias. Same outputs as `model` (eval mode) to float rounding. Module names kept.

    prepare_float(model, input_shape=(3, 112, 112), keep_float=()) -> (GraphModule, Placement)
        fold_bn, one analysis pass on an example input (graph.py: which values are float tensors computed
        from the input, their shapes, channel axes), layer-scale folding, and the quantizer placement read
        from the per-operator table edgeface.quant_ops.TORCH_OPS (prepare.py).

    ptq(model, spec, images, bits="w8a8", calibration="percentile"|"minmax"|"mse", num_images=512,
        layer_bits=None, percentile=99.99, batch_size=64, progress=True, bias_correction=True,
        keep_float=(), smooth="auto", fallback=4.0) -> GraphModule
        Copy, prepare, migrate LayerNorm outlier channels into the next layer (`smooth`: "auto" picks the
        strength per LayerNorm by measurement, a float fixes SmoothQuant's alpha, None is off),
        insert quantizers, calibrate on `num_images` of `images` (paths, or a list of NCHW float batches
        already normalised), then empirical bias correction. `bits`: "w8a8", "w6a6" (first and last weight
        layer kept at 8 bits), any "wNaM" with N, M in 4..8. `layer_bits`: {"conv1.0": 8, "aq_add_3": 8, ...}
        overrides. `keep_float`: layers / graph nodes / op names left in float. `fallback`: multiple of the
        mean measured loss per quantizer above which an int8 layer fed by a float op stays float. The CLI uses
        calibration="mse".

    qat(model, spec, images, bits="w6a6", loss="cosine"|"ekd"|"cosine+ekd", epochs=1, lr=None,
        batch_size=32, max_steps=None, calibration="mse", num_images=512, layer_bits=None,
        progress=True, seed=0, qmodel=None, max_seconds=None) -> (GraphModule, stats)
        PTQ initialisation, then fake-quant training with the straight-through estimator, distilling from
        the float `model` (edgeface.compress.distill); lr None: 1e-5 for 8-bit weights, else 5e-5. A QAT
        that lowers the cosine to fp32 on held-out faces returns its PTQ start. Runs under torchrun (DDP)
        when torch.distributed is initialised.

    mixed_precision(model, spec, images, size_budget, candidates=(8, 6), calibration="mse",
                    num_images=512, sensitivity_images=64, layer_bits=None, progress=True)
        -> (GraphModule, report)
        Per-layer sensitivity (1 - cosine of the embedding to fp32 with only that layer quantized at each
        candidate width), then the cheapest-loss bit assignment whose weights fit `size_budget` bytes.

    quant_plan(qmodel) -> dict
        JSON-able: per weight layer (key = qualified module name = ONNX initializer prefix with
        torch.onnx.export(dynamo=False)): weight bits, per-channel weight scales (symmetric, zero point 0,
        axis 0), fused activation, and the scale / zero_point / bits / quant_min / quant_max of its input
        and output activation quantizers; plus all quantizers by name, the model input and output
        quantizer, and the transform record.

    model_size_bytes(model) -> int       weights at their stored bit width (int6 packed), the rest 32-bit
    count_macs(model, input_shape) -> int

    rebuild(model, record, state_dict) -> GraphModule
        Replays a {"kind": "quant", ...} checkpoint record on the (possibly pruned) base model so that
        load_state_dict(strict=True) works; used by edgeface.models.checkpoint.restore.

Quantizer placement (what an int8 runtime has; prepare.py): the model input (`aq_input`), every conv/linear
output after its fused ReLU/ReLU6/PReLU (`aq_<layer>`), every tensor add / mul / concat / average pool
(`aq_<fx node name>`), and every other float tensor an integer op reads (a LayerNorm's or GELU's output
before a Linear: `aq_<fx node name>`). Shapes, indices and constants are never quantized. Activations are
affine per tensor on the signed grid (int8: -128..127; int6: -32..31); weights symmetric per output
channel on the narrow grid (int8: -127..127; int6: -31..31).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgeface.compress.quant.fold import fold_bn
from edgeface.compress.quant.plan import count_macs, model_size_bytes, quant_plan
from edgeface.compress.quant.ptq import RECORD_ATTR, prepare_float, ptq, quantize_structure

# imported eagerly: a lazy wrapper named `qat` would be replaced by the submodule of the same name as soon
# as anything imports edgeface.compress.quant.qat (the second QAT run in one process then failed)
from edgeface.compress.quant.qat import qat  # noqa: E402

__all__ = [
    "count_macs",
    "fold_bn",
    "mixed_precision",
    "model_size_bytes",
    "prepare_float",
    "ptq",
    "qat",
    "quant_plan",
    "rebuild",
]


def mixed_precision(*args: Any, **kwargs: Any) -> Any:
    from edgeface.compress.quant.mixed import mixed_precision as _mixed

    return _mixed(*args, **kwargs)


def rebuild(model: nn.Module, record: dict[str, Any], state_dict: dict[str, Any]) -> nn.Module:
    """Recreate the quantized structure (folded BN and layer scale, fake-quant layers, quantizers).

    Values come from the state_dict afterwards; folding here runs on whatever weights `model` has, which is
    fine because only the structure (which BN went where) matters, and that depends on the graph and the
    recorded input shape alone. Every field read from the record is checked: it is data from a file.
    """
    from edgeface.errors import EdgefaceError

    plan = record.get("plan")
    if not isinstance(plan, dict) or "weights" not in plan or "activations" not in plan:
        raise EdgefaceError("quantization record in the checkpoint has no bit plan (corrupt checkpoint?)")
    for part in ("weights", "activations"):
        table = plan[part]
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in table.items()
        ):
            raise EdgefaceError(f"quantization record: '{part}' is not a table of layer -> bits")
    shape = record.get("input_shape", [3, 112, 112])
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 8192 for s in shape)
    ):
        raise EdgefaceError(f"quantization record: invalid input_shape {shape!r}")
    keep = record.get("keep_float", [])
    if (
        not isinstance(keep, list)
        or len(keep) > 10_000
        or not all(isinstance(k, str) and 0 < len(k) <= 500 for k in keep)
    ):
        raise EdgefaceError("quantization record: keep_float must be a list of layer / op names")
    gm = quantize_structure(
        model,
        str(record.get("bits", "w8a8")),
        plan=plan,
        input_shape=shape,
        keep_float=keep,
    )
    setattr(gm, RECORD_ATTR, dict(record))
    return gm.eval()
