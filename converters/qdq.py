"""Build an int8 (or 6-bit-on-int8) QDQ ONNX graph from a clean float graph and a quantization plan.

Why by hand rather than onnxruntime.quantization.quantize_static: the plan may come from `edgeface quantize`
(learned scales that must survive export, not be recalibrated), the w6a6 grid needs a Clip between Q and DQ
(QCDQ), and the layout that makes ORT fastest is specific: every tensor gets Q/DQ so ORT fuses
DQ->Conv->Q into QLinearConv and DQ->Add->Q into QLinearAdd, ReLU/ReLU6 are absorbed into the range of the
conv's output quantizer (zero point at the bottom of the range, top <= 6), the graph input and output are
int8 so no float pass remains at either end, and the trailing Flatten runs on int8.

Weights: symmetric, per output channel (axis 0), int8 storage; `weight_bits=6` keeps them on the 6-bit grid
[-31, 31]. Biases: int32 with scale = input scale * weight scale, which is what QLinearConv expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ACTIVATIONS = ("Relu", "Clip")  # absorbed into the producing conv's output range
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class QParams:
    """Affine quantization of one activation tensor; `qmin`/`qmax` narrower than the dtype mean 6-bit."""

    scale: float
    zero_point: int
    dtype: str = "uint8"
    qmin: int = 0
    qmax: int = 255

    @property
    def np_dtype(self) -> Any:
        return np.uint8 if self.dtype == "uint8" else np.int8

    @property
    def narrowed(self) -> bool:
        full = (0, 255) if self.dtype == "uint8" else (-128, 127)
        return (self.qmin, self.qmax) != full


def activation_qparams(lo: float, hi: float, bits: int = 8, dtype: str = "uint8") -> QParams:
    """Asymmetric affine params covering [lo, hi] (always including 0) with 2**bits levels.

    A range that starts at 0 (after ReLU) gets its zero point exactly at the bottom of the grid, which is
    what lets ORT drop the ReLU into the conv's requantization.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    levels = 2**bits - 1
    base = 0 if dtype == "uint8" else -128
    qmin, qmax = base, base + levels
    if bits < 8 and dtype == "int8":  # centre the narrow grid in the int8 range: [-32, 31] for 6 bits
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / levels
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QParams(float(scale), zp, dtype, qmin, qmax)


def weight_scales(weight: np.ndarray, bits: int = 8) -> np.ndarray:
    """Symmetric per-output-channel scales (axis 0) so that max|w| maps to 2**(bits-1) - 1."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    return np.maximum(amax / qmax, 1e-12).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, bits: int = 8) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return np.clip(np.round(weight / scales.reshape(shape)), -qmax, qmax).astype(np.int8)


def quant_points(proto: Any) -> list[str]:
    """The tensors that carry Q/DQ: the graph input and every op output except a conv output that only feeds
    ReLU/Clip (that activation's output is quantized instead) and shape ops (they pass int8 through)."""
    graph = proto.graph
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    points = [i.name for i in graph.input]
    for n in graph.node:
        if n.op_type in SHAPE_OPS:
            continue
        out = n.output[0]
        users = consumers.get(out, [])
        if n.op_type == "Conv" and len(users) == 1 and users[0].op_type in ACTIVATIONS:
            continue
        points.append(out)
    return points


class RangeCollector:
    """Statistics of each quant point over calibration batches: min/max plus a bounded random sample, from
    which a range is chosen per method and bit width (6 bits needs tighter ranges than 8)."""

    def __init__(self, sample: int = 100_000, seed: int = 0) -> None:
        self.sample = sample
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.values: dict[str, list[np.ndarray]] = {}
        self.rng = np.random.default_rng(seed)

    def update(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).ravel()
        self.lo[name] = min(self.lo.get(name, np.inf), float(x.min()))
        self.hi[name] = max(self.hi.get(name, -np.inf), float(x.max()))
        take = min(x.size, self.sample // 8)
        self.values.setdefault(name, []).append(x[self.rng.integers(0, x.size, take)])

    def range(self, name: str, method: str = "mse", bits: int = 8) -> tuple[float, float]:
        lo, hi = min(self.lo[name], 0.0), max(self.hi[name], 0.0)
        if method == "minmax":
            return lo, hi
        v = np.concatenate(self.values[name])
        if method == "percentile":
            p = 99.99
            return (float(np.percentile(v, 100 - p)) if lo < 0 else 0.0), float(np.percentile(v, p))
        if method == "mse":
            return _mse_range(v, lo, hi, bits)
        raise ValueError(f"unknown calibration method {method!r}")


def _mse_range(v: np.ndarray, lo: float, hi: float, bits: int, steps: int = 40) -> tuple[float, float]:
    """Shrink [lo, hi] towards 0 by the factor that minimises the quantization MSE on the sample: clipping a
    few outliers buys a finer grid for everything else, which matters most at 6 bits."""
    levels = 2**bits - 1
    best, best_err = (lo, hi), np.inf
    for f in np.linspace(1.0, 0.2, steps):
        a, b = lo * f, hi * f
        scale = max((b - a) / levels, 1e-12)
        zp = np.round(-a / scale)
        q = np.clip(np.round(v / scale) + zp, 0, levels)
        err = float(np.mean(((q - zp) * scale - v) ** 2))
        if err < best_err:
            best, best_err = (a, b), err
    return best


def collect_stats(proto: Any, points: list[str], batches: Iterable[np.ndarray]) -> RangeCollector:
    """Run the float graph with every quant point exposed as an output and gather each one's statistics."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    known = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in points:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    wanted = set(points)
    collector = RangeCollector()
    for batch in batches:
        outs = sess.run(None, {input_name: batch})
        if input_name in wanted:
            collector.update(input_name, batch)
        for name, value in zip(out_names, outs, strict=True):
            if name in wanted:
                collector.update(name, value)
    return collector


def activation_plan(
    proto: Any,
    ranges: Mapping[str, tuple[float, float]],
    bits: int = 8,
    dtype: str = "uint8",
    bits_override: Mapping[str, int] | None = None,
) -> dict[str, QParams]:
    """Ranges -> QParams, clamping a ReLU6 output's range to [0, 6] so ORT can drop the Clip.

    `bits_override` gives some tensors their own grid (a checkpoint's 8-bit ends in a w6a6 model)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    plan = {}
    for name, (lo, hi) in ranges.items():
        node = producers.get(name)
        if node is not None and node.op_type in ACTIVATIONS:
            lo = 0.0
            if node.op_type == "Clip":
                hi = min(hi, _clip_max(node, proto))
        plan[name] = activation_qparams(lo, hi, (bits_override or {}).get(name, bits), dtype)
    for node in proto.graph.node:  # a PReLU-as-Max lives on its input's grid (see onnx_float.prelu_as_max)
        if is_prelu_max(node) and node.input[0] in plan:
            plan[node.input[1]] = plan[node.output[0]] = plan[node.input[0]]
    return plan


def is_prelu_max(node: Any) -> bool:
    return node.op_type == "Max" and node.name.endswith("/prelu_max") and len(node.input) == 2


def _clip_max(node: Any, proto: Any) -> float:
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    if len(node.input) > 2 and node.input[2] in inits:
        return float(numpy_helper.to_array(inits[node.input[2]]))
    return float("inf")


def build_qdq(
    proto: Any,
    act: Mapping[str, QParams],
    weight_bits: int = 8,
    weight_scale_override: Mapping[str, np.ndarray] | None = None,
    quantize_io: bool = True,
    float_convs: Iterable[str] = (),
    weight_bits_override: Mapping[str, int] | None = None,
) -> tuple[Any, QParams | None, QParams | None]:
    """Insert Q/DQ (and Clip for narrowed grids) around every quant point and quantize conv weights.

    `weight_scale_override` maps a Conv node name to per-channel scales learned elsewhere (a QAT/PTQ plan);
    other convs get max-abs scales; `weight_bits_override` gives a conv its own bit width (a checkpoint's
    per-layer bits). Convs named in `float_convs` stay float (their output is still quantized
    for the next layer): for a 3-channel stem conv ORT's float kernel is faster than its int8 one.
    Returns (model, input qparams, output qparams); the latter two are None
    where the graph keeps a float input/output.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_inits: list[Any] = []
    nodes: list[Any] = []
    overrides = dict(weight_scale_override or {})
    input_name = graph.input[0].name
    output_name = graph.output[0].name
    producers = {o: n for n in graph.node for o in n.output}
    float_convs = set(float_convs)
    int_output_allowed = quantize_io
    if any(n.name in float_convs and input_name in n.input for n in graph.node):
        quantize_io = False  # a float stem reads the float image: no integer graph input
        act = {k: v for k, v in act.items() if k != input_name}

    def const(name: str, value: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    # where each quant point's consumers read from: tensor -> (q tensor, qparams)
    qtensor: dict[str, str] = {}

    def emit_quant(name: str, q_out: str | None = None, source: str | None = None) -> None:
        p = act[name]
        s = const(f"{name}_scale", np.array(p.scale, np.float32))
        z = const(f"{name}_zp", np.array(p.zero_point, p.np_dtype))
        q = q_out or f"{name}_q"
        if p.narrowed:
            nodes.append(
                helper.make_node("QuantizeLinear", [source or name, s, z], [q + "_wide"], name=f"{name}_Q")
            )
            lo = const(f"{name}_qmin", np.array(p.qmin, p.np_dtype))
            hi = const(f"{name}_qmax", np.array(p.qmax, p.np_dtype))
            nodes.append(helper.make_node("Clip", [q + "_wide", lo, hi], [q], name=f"{name}_QClip"))
        else:
            nodes.append(helper.make_node("QuantizeLinear", [name, s, z], [q], name=f"{name}_Q"))
        qtensor[name] = q

    dq_count: dict[str, int] = {}

    def dq_for(name: str) -> str:
        """A fresh DequantizeLinear per consumer: ORT's node-unit matching wants DQs it can own."""
        k = dq_count.get(name, 0)
        dq_count[name] = k + 1
        out = f"{name}_dq{k}"
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [qtensor[name], f"{name}_scale", f"{name}_zp"],
                [out],
                name=f"{name}_DQ{k}",
            )
        )
        return out

    in_q = out_q = None
    if quantize_io and input_name in act:
        in_q = act[input_name]
        const(f"{input_name}_scale", np.array(in_q.scale, np.float32))
        const(f"{input_name}_zp", np.array(in_q.zero_point, in_q.np_dtype))
        qtensor[input_name] = input_name  # the graph input itself becomes the integer tensor
    elif input_name in act:
        emit_quant(input_name)

    # the graph output: a shape op fed by a quant point runs on the quantized tensor
    out_node = producers.get(output_name)
    int_output = (
        int_output_allowed
        and out_node is not None
        and out_node.op_type in SHAPE_OPS
        and out_node.input[0] in act
    )

    for node in graph.node:
        if node.op_type in SHAPE_OPS and node is out_node and int_output:
            new = helper.make_node(
                node.op_type,
                [qtensor[node.input[0]]] + list(node.input[1:]),
                list(node.output),
                name=node.name,
            )
            new.attribute.extend(node.attribute)
            nodes.append(new)
            out_q = act[node.input[0]]
            continue
        inputs = list(node.input)
        if node.op_type == "Conv" and node.name in float_convs:
            for j, name in enumerate(inputs):
                if name in qtensor and name in act:
                    inputs[j] = dq_for(name)
                elif name in inits and name not in {t.name for t in new_inits}:
                    new_inits.append(numpy_helper.from_array(inits[name], name))
        elif node.op_type == "Conv":
            x = inputs[0]
            w = inits[inputs[1]]
            wbits = (weight_bits_override or {}).get(node.name, weight_bits)
            scales = overrides.get(node.name)
            scales = weight_scales(w, wbits) if scales is None else np.asarray(scales, np.float32)
            qw = quantize_weight(w, scales, wbits)
            wq = const(f"{node.name}.weight_quantized", qw)
            ws = const(f"{node.name}.weight_scale", scales)
            wz = const(f"{node.name}.weight_zp", np.zeros_like(scales, dtype=np.int8))
            w_dq = f"{node.name}.weight_dq"
            nodes.append(
                helper.make_node("DequantizeLinear", [wq, ws, wz], [w_dq], name=f"{node.name}_wDQ", axis=0)
            )
            src = _quant_source(x, producers, act)
            inputs[0] = dq_for(src) if src in qtensor else x
            inputs[1] = w_dq
            if len(inputs) > 2 and inputs[2]:
                b = inits[inputs[2]]
                bscale = (act[src].scale * scales).astype(np.float32)
                with np.errstate(divide="ignore", invalid="ignore"):  # a dead channel: zero scale and bias
                    qb = np.nan_to_num(np.round(b / bscale), nan=0.0)
                qb = np.clip(qb, -(2**31) + 1, 2**31 - 1).astype(np.int32)
                bq = const(f"{node.name}.bias_quantized", qb)
                bs = const(f"{node.name}.bias_scale", bscale)
                bz = const(f"{node.name}.bias_zp", np.zeros_like(qb))
                b_dq = f"{node.name}.bias_dq"
                nodes.append(
                    helper.make_node(
                        "DequantizeLinear", [bq, bs, bz], [b_dq], name=f"{node.name}_bDQ", axis=0
                    )
                )
                inputs[2] = b_dq
        else:
            for j, name in enumerate(inputs):
                if name in qtensor and name in act:
                    inputs[j] = dq_for(name)
                elif name in inits and name not in {t.name for t in new_inits}:
                    new_inits.append(numpy_helper.from_array(inits[name], name))
        if is_prelu_max(node) and all(i in qtensor for i in node.input) and node.output[0] in act:
            # integer Max straight on the two uint8 tensors, which share one grid: no DQ, no Q
            nodes = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.output[0] in inputs)]
            q_out = node.output[0] + "_q"
            nodes.append(helper.make_node("Max", [qtensor[i] for i in node.input], [q_out], name=node.name))
            qtensor[node.output[0]] = q_out
            p = act[node.output[0]]
            const(f"{node.output[0]}_scale", np.array(p.scale, np.float32))
            const(f"{node.output[0]}_zp", np.array(p.zero_point, p.np_dtype))
            continue
        if (
            node.op_type in ACTIVATIONS
            and node.output[0] in act
            and _grid_clamps(node, act[node.output[0]], inits)
        ):
            # a narrowed (6-bit) grid starting at 0 and ending at or below the clip does the activation's
            # work itself; ORT absorbs ReLU/Clip only for full-range grids: drop it to keep QLinearConv
            emit_quant(node.output[0], source=inputs[0])
            continue
        new = helper.make_node(node.op_type, inputs, list(node.output), name=node.name, domain=node.domain)
        new.attribute.extend(node.attribute)
        nodes.append(new)
        if node.output[0] in act:
            emit_quant(node.output[0])

    graph_inputs = list(graph.input)
    if in_q is not None:
        shape = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        graph_inputs = [helper.make_tensor_value_info(input_name, _onnx_dtype(in_q), shape)]
    graph_outputs = list(graph.output)
    if out_q is not None:
        shape = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        graph_outputs = [helper.make_tensor_value_info(output_name, _onnx_dtype(out_q), shape)]
    new_graph = helper.make_graph(nodes, graph.name, graph_inputs, graph_outputs, new_inits)
    model = helper.make_model(new_graph, opset_imports=list(proto.opset_import), producer_name="edgeface")
    model.ir_version = proto.ir_version
    _prune_unused(model)
    onnx.checker.check_model(model)
    return model, in_q, out_q


def _grid_clamps(node: Any, p: QParams, inits: Mapping[str, np.ndarray]) -> bool:
    """True when Q + the narrow Clip already give relu / clip(0, m): zero point at the grid's bottom and the
    grid's top value within m."""
    if not p.narrowed or p.zero_point != p.qmin:
        return False
    if node.op_type == "Relu":
        return True
    lo = float(inits[node.input[1]]) if len(node.input) > 1 and node.input[1] in inits else -np.inf
    hi = float(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else np.inf
    return lo == 0.0 and p.scale * (p.qmax - p.zero_point) <= hi * (1 + 1e-6)


def _quant_source(x: str, producers: Mapping[str, Any], act: Mapping[str, QParams]) -> str:
    """The quant point a conv reads: its input tensor itself (every op output is a quant point)."""
    if x in act:
        return x
    raise KeyError(f"conv input {x} has no quantization parameters")


def _onnx_dtype(p: QParams) -> int:
    from onnx import TensorProto

    return TensorProto.UINT8 if p.dtype == "uint8" else TensorProto.INT8


def _prune_unused(model: Any) -> None:
    """Drop nodes and initializers nothing reads (a Q whose tensor became the graph input, say)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
