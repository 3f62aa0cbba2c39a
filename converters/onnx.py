"""ONNX artifacts: fp32, int8 (w8a8) and w6a6, every one self-contained (weights inside the file, opset 17).

int8 follows the QDQ convention ORT's CPU kernels want (see qdq.py): uint8 activations with a per-tensor
scale and zero point, int8 symmetric per-output-channel weights, uint8 graph input and output (their
parameters go into the spec, the runtime applies them). Measured on this CPU, int8 activations
(s8s8) are ~2x slower than uint8 in ORT 1.31; see docs/speed.md. Integer artifacts take NHWC input and
compute the stem conv through SpaceToDepth (onnx_layout.py), which ORT runs faster and which is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from edgeface.converters import qdq
from edgeface.converters.onnx_float import OPSET, export_float_onnx, prelu_as_max
from edgeface.converters.onnx_layout import nhwc_input, stem_space_to_depth

from edgeface.spec import ModelSpec, TensorQuant

PRECISION_BITS = {"fp32": None, "int8": 8, "w6a6": 6}
SPEC_PRECISION = {"fp32": "fp32", "int8": "w8a8", "w6a6": "w6a6"}


@dataclass
class OnnxBuild:
    proto: Any  # the artifact's ModelProto (spec not yet embedded)
    spec: ModelSpec
    float_proto: Any  # the clean float graph it was quantized from (for layer drift)
    points: list[str]
    drift_proto: Any = None  # the QDQ graph before the input-side layout rewrites (same input as float_proto)
    float_ops: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op type, why) left float


def float_graph(model: Any, spec: ModelSpec) -> Any:
    return export_float_onnx(model, spec.input_size, OPSET)


def _tensor_quant(p: qdq.QParams | None) -> TensorQuant | None:
    return None if p is None else TensorQuant(scale=p.scale, zero_point=p.zero_point, dtype=p.dtype)


def build_onnx(
    float_proto: Any,
    spec: ModelSpec,
    precision: str,
    stats: qdq.RangeCollector | None = None,
    plan: Mapping[str, Any] | None = None,
    method: str = "mse",
    keep_float: tuple[str, ...] = (),
    float_tensors: tuple[str, ...] = (),
) -> OnnxBuild:
    """Quantize `float_proto` to `precision`.

    Activation ranges come from `plan["activations"]` (tensor name -> (lo, hi) learned by `edgeface quantize`)
    where given, else from calibration batches; weight scales from `plan["weights"]` (conv node name ->
    per-channel scales) where given, else max-abs.
    """
    bits = PRECISION_BITS[precision]
    # PReLU as Max(x, a*x) is exact and faster in float too (ORT's fp32 PRelu kernel is slow: mbf 2x,
    # iresnet18 1.1x, docs/speed.md), so every precision ships it and speed-ups compare like with like
    float_proto = prelu_as_max(float_proto, any_slope=bits is not None)
    if bits is None:
        # a quantized checkpoint's spec carries the integer artifact's input/output grids: not a float graph's
        float_spec = spec.replace(precision="fp32", input_quant=None, output_quant=None)
        return OnnxBuild(float_proto, float_spec, float_proto, [])
    float_convs = grouped_convs(float_proto)
    gplan = qdq.plan_graph(
        float_proto,
        [*keep_float, *float_convs],
        float_tensors,
        {
            **{c: qdq.CHECKPOINT_FLOAT_REASON for c in (plan or {}).get("keep_float", ())},
            **{c: qdq.GROUPED_CONV_REASON for c in float_convs},
        },
    )
    points = gplan.points
    ranges: dict[str, tuple[float, float]] = dict((plan or {}).get("activations", {}))
    missing = [p for p in points if p not in ranges]
    if missing and stats is None:
        raise ValueError(f"no calibration statistics for {missing[0]}, which the plan does not cover")
    if missing:
        ranges.update(qdq.calibrated_ranges(float_proto, missing, stats, method, bits))
    act_bits = dict((plan or {}).get("activation_bits", {}))
    act = qdq.activation_plan(
        float_proto,
        {p: ranges[p] for p in points},
        bits,
        "uint8",
        act_bits,
        [*keep_float, *float_convs],
        float_tensors,
    )
    # the graph's ends stay 8-bit in w6a6: the input is an 8-bit image and the embedding is the product
    out_name = float_proto.graph.output[0].name
    inp, out = float_proto.graph.input[0].name, gplan.shared.get(out_name, out_name)
    for end in (inp, out):
        if end in act and act[end].narrowed:
            r = stats.range(end, method, 8) if stats is not None and end in stats.lo else ranges[end]
            act[end] = qdq.activation_qparams(*r, bits=8, dtype="uint8")
            for shared_out, src in gplan.shared.items():
                if src == end:
                    act[shared_out] = act[end]
    import onnx

    weight_scales, weight_bits = gemm_safe_weights(
        float_proto, bits, (plan or {}).get("weights"), (plan or {}).get("weight_bits")
    )
    qdq_proto, in_q, out_q = qdq.build_qdq(
        float_proto,
        act,
        bits,
        weight_scales,
        float_convs=float_convs,
        weight_bits_override=weight_bits,
        keep_float=keep_float,
        float_tensors=float_tensors,
    )
    proto = onnx.ModelProto()
    proto.CopyFrom(qdq_proto)
    stem_space_to_depth(proto)
    nhwc_input(proto)
    weights_desc = f"int{bits} symmetric per-channel (axis 0, output channels)"
    narrowed = sum(b == GEMM_SAFE_BITS for b in weight_bits.values())
    if narrowed:
        weights_desc += (
            f"; {narrowed} convs that run as GEMM on the 7-bit grid [-63, 63] (exact on x86 without VNNI)"
        )
    if bits < 8:
        weights_desc = (
            f"{bits}-bit grid [-{2 ** (bits - 1) - 1}, {2 ** (bits - 1) - 1}] in int8 storage, "
            "symmetric per-channel (axis 0)"
        )
    if float_convs:
        weights_desc += (
            f"; {len(float_convs)} grouped (not depthwise) conv(s) kept float: {', '.join(float_convs)}"
        )
    new_spec = spec.replace(
        precision=SPEC_PRECISION[precision],
        input_quant=_tensor_quant(in_q),
        output_quant=_tensor_quant(out_q),
        weight_quant=weights_desc,
        layout="NHWC",
    )
    return OnnxBuild(proto, new_spec, float_proto, points, qdq_proto, gplan.float_ops)


GEMM_SAFE_BITS = 7


def gemm_safe_weights(
    proto: Any,
    bits: int,
    scales: Mapping[str, np.ndarray] | None,
    layer_bits: Mapping[str, int] | None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """8-bit weights of convs that ORT runs as a GEMM go on the 7-bit grid [-63, 63].

    ORT's u8s8 GEMM on x86 CPUs without VNNI (AVX2: every AMD Zen 3 and older, Intel before Ice Lake /
    Alder Lake) multiplies with vpmaddubsw, which adds two uint8 x int8 products in int16 and saturates:
    255 * 127 * 2 > 32767. Measured on an AMD EPYC (Zen 3): mobilefacenet int8 parity 0.986 mean / 0.950
    min with 8-bit weights against 0.995 / 0.990 for the same QDQ graph run without integer kernels
    (`python benchmarks/ort_saturation.py`). With |w| <= 63 no pair can saturate, so the artifact computes
    the same integers on every CPU, VNNI or not, x86 or ARM; this is ORT's own `reduce_range` advice.
    Depthwise convs keep 8 bits: their kernel accumulates in int32 (exact, measured). Learned 8-bit scales
    (a checkpoint of `edgeface quantize`) are widened to keep their range on the coarser grid.
    """
    from onnx import helper, numpy_helper

    out_scales = {k: np.asarray(v, np.float32) for k, v in (scales or {}).items()}
    out_bits = dict(layer_bits or {})
    inits = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w_shape = numpy_helper.to_array(inits[n.input[1]]).shape
        group = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
        depthwise = group > 1 and w_shape[1] == 1
        if depthwise or out_bits.get(n.name, bits) != 8:
            continue
        out_bits[n.name] = GEMM_SAFE_BITS
        if n.name in out_scales:
            out_scales[n.name] = out_scales[n.name] * np.float32(127 / 63)
    return out_scales, out_bits


def widened_learned_layers(proto: Any, plan: Mapping[str, Any]) -> list[str]:
    """The checkpoint's layers (by module name) whose learned 8-bit weights gemm_safe_weights moves to the
    7-bit grid: the export then differs from the checkpoint by that coarser grid, which a layer quantized
    at 7 bits in the first place (`edgeface quantize --layer-bits NAME=7`) avoids."""
    _, bits = gemm_safe_weights(proto, 8, plan.get("weights"), plan.get("weight_bits"))
    learned = plan.get("weight_bits", {})
    names = plan.get("layer_of", {})
    return [names.get(n, n) for n, b in bits.items() if b == GEMM_SAFE_BITS and learned.get(n) == 8]


def grouped_convs(proto: Any) -> list[str]:
    """Convs with groups of several channels (not depthwise, not dense), which stay float in int8 artifacts.

    ORT 1.31's int8 kernel for them runs one tiny GEMM per group: in arcface_torch's MobileFaceNet (mbf,
    128 channels in 64 groups at 56x56) that one conv is ~6x slower in int8 than in fp32
    (`python benchmarks/ort_prelu_float.py --model mbf --int8 ...`, docs/speed.md).
    Kept float, it reads a dequantized input and its output is quantized for the next layer as usual.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    found = []
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        group = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
        per_group = numpy_helper.to_array(inits[n.input[1]]).shape[1]  # input channels per group
        if group > 1 and per_group > 1:
            found.append(n.name)
    return found


def per_channel_weight_scales(proto: Any) -> dict[str, int]:
    """Conv name -> number of per-channel weight scales on axis 0 (what `edgeface export` promises)."""
    from onnx import helper, numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    found = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.name.endswith("_wDQ"):
            axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
            scale = inits.get(n.input[1])
            if axis == 0 and scale is not None and scale.ndim == 1:
                found[n.name[: -len("_wDQ")]] = int(scale.size)
    return found


def int8_weight_bytes(proto: Any, max_abs: int = 127) -> int:
    """Bytes of int8 weight tensors whose codes all lie in [-max_abs, max_abs]; with 31, what bit-packing
    at 6 bits would shrink by a quarter (a checkpoint's 8-bit layers and PReLU slopes do not count)."""
    from onnx import numpy_helper

    total = 0
    for t in proto.graph.initializer:
        if t.data_type == 3 and len(t.dims) > 1:  # INT8 tensors with a shape: weights, not zero points
            w = numpy_helper.to_array(t)
            if int(np.abs(w.astype(np.int16)).max(initial=0)) <= max_abs:
                total += w.size
    return total
