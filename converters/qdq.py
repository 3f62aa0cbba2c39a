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


@dataclass
class GraphPlan:
    """Which nodes of a float graph run on integers, decided by the per-operator table (edgeface.quant_ops).

    - `integer`: nodes that run as integer kernels (weighted and compute ops) or pass integer codes through
      (same-grid ops);
    - `points`: tensors that get a QuantizeLinear with their own calibrated grid (the graph input, integer
      op outputs, and float-op outputs read by an integer op);
    - `shared`: same-grid outputs -> the tensor whose grid they keep;
    - `float_ops`: (node name, op type, why) of every node left in float (shape arithmetic excluded).
    """

    integer: set[str]
    points: list[str]
    shared: dict[str, str]
    float_ops: list[tuple[str, str, str]]


def _float_tensors(proto: Any) -> set[str]:
    """Names of the float32 tensors of the graph (inputs, op outputs), from ONNX shape/type inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # no types: fall back to "every op output is float" for ops that produce floats
        inferred = proto
    found = set()
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            found.add(vi.name)
    return found


def _matches(node: Any, patterns: Iterable[str]) -> bool:
    """A node named by --keep-float: the pattern equals its name or one of its module-path segments."""
    name = node.name
    flat = name.strip("/").replace("/", ".")
    return any(
        p and (p == name or p == flat or flat.startswith(p + ".") or f".{p}." in f".{flat}.")
        for p in patterns
    )


GROUPED_CONV_REASON = "grouped (not depthwise) conv: ORT's int8 grouped kernel is slower than float"
CHECKPOINT_FLOAT_REASON = "left float by the quantized checkpoint (checkpoint_float_layers: which, why)"


def plan_graph(
    proto: Any,
    keep_float: Iterable[str] = (),
    float_tensors: Iterable[str] = (),
    reasons: Mapping[str, str] | None = None,
) -> GraphPlan:
    """Walk the graph in order and decide each node from its OpRule (see edgeface/quant_ops.py).

    Only float tensors are ever quantized. A weighted op (a constant weight) always runs on integers; a
    compute op only when every activation it reads is already on an integer grid (so a float island, a
    GELU say, is not chopped into Q/DQ pieces); a same-grid op passes its input's codes through; shape
    ops and unknown ops stay float. A float tensor read by an integer op gets its own quantizer; where it
    reaches the integer op through same-grid ops (a reshape after a LayerNorm), the quantizer moves up to
    the float op's output so the same-grid ops run on codes too.

    `float_tensors` are never quantized (sensitivity.fragile_tensors finds them): their producer writes
    float (a Gemm still runs on integers, QGemm with a float output) and every op that reads them, a
    weighted one included, runs in float.
    """
    from edgeface.quant_ops import onnx_rule

    keep = tuple(keep_float)
    no_q = set(float_tensors)
    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    floats = _float_tensors(proto) | {graph.input[0].name}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def acts(node: Any) -> list[str]:
        return [i for i in node.input if i and i not in inits and i in floats]

    integer: set[str] = set()
    # tensors available as integer codes: the graph input, unless kept float (a quantized checkpoint whose
    # first layer reads the float image)
    start = [] if graph.input[0].name in no_q else [graph.input[0].name]
    on_grid: set[str] = set(start)
    points: list[str] = list(start)
    shared: dict[str, str] = {}
    float_ops: list[tuple[str, str, str]] = []

    def reachable(t: str) -> bool:
        """Can tensor t be put on a grid (it is not kept float, nor moved from a kept-float tensor)?"""
        while True:
            if t in on_grid:
                return True
            if t in no_q:
                return False
            p = producers.get(t)
            if p is None or _kind(p) != "same_grid" or len(acts(p)) != 1:
                return True
            t = acts(p)[0]

    def need(t: str) -> None:
        """Make tensor t available on a grid (a quantizer at t, or further up a same-grid chain)."""
        if t in on_grid:
            return
        chain = []
        cur = t
        while True:
            p = producers.get(cur)
            if (
                p is None
                or cur in no_q
                or p.name in keep_names
                or _kind(p) != "same_grid"
                or len(acts(p)) != 1
                or len(consumers.get(acts(p)[0], [])) != 1
            ):
                break
            chain.append(p)
            cur = acts(p)[0]
        points.append(cur)
        on_grid.add(cur)
        for p in reversed(chain):
            integer.add(p.name)
            for o in p.output:
                if o in floats:
                    shared[o] = shared.get(acts(p)[0], acts(p)[0])
                    on_grid.add(o)
            float_ops[:] = [f for f in float_ops if f[0] != p.name]

    def _kind(node: Any) -> str:
        if is_prelu_relu(node):
            return "same_grid"  # relu on x's own codes: an integer Max with x's zero point
        return _kind_of(node, inits) if node.domain in ("", "ai.onnx") else "float"

    keep_names = {n.name for n in graph.node if _matches(n, keep)}
    for node in graph.node:
        rule = onnx_rule(node.op_type)
        kind = _kind(node)
        outs = [o for o in node.output if o in floats]
        if node.name in keep_names and kind != "shape":
            why = (reasons or {}).get(node.name, "kept float by --keep-float")
            float_ops.append((node.name, node.op_type, why))
            continue
        if kind == "shape" or not outs or not acts(node) and kind != "weighted":
            continue  # shape arithmetic, integer outputs, constants: never quantized
        readable = all(reachable(a) for a in acts(node))
        if (kind == "weighted" and readable) or (
            kind == "compute" and all(a in on_grid for a in acts(node)) and not set(outs) & no_q
        ):
            for a in acts(node):
                need(a)
            integer.add(node.name)
            for o in outs:
                if o in no_q:
                    continue  # kept float by sensitivity: written in float (QGemm has a float output)
                users = consumers.get(o, [])
                if (
                    node.op_type in ("Conv", "Gemm")
                    and len(users) == 1
                    and users[0].op_type in ACTIVATIONS
                    and users[0].name not in keep_names
                ):
                    on_grid.add(o)  # the activation's output is quantized instead (ReLU absorbed)
                    continue
                points.append(o)
                on_grid.add(o)
            continue
        if kind == "same_grid" and len(acts(node)) == 1 and acts(node)[0] in on_grid and not set(outs) & no_q:
            integer.add(node.name)
            for o in outs:
                shared[o] = shared.get(acts(node)[0], acts(node)[0])
                on_grid.add(o)
            continue
        why = (
            rule.why
            if rule is not None and kind == "float"
            else (
                "no integer kernel for it in this position (it reads a float tensor)"
                if rule is not None
                else "not in the operator table (edgeface/quant_ops.py): unknown ops stay float"
            )
        )
        if kind == "weighted":
            why = "reads a tensor kept float (quantizing it alone drops the embedding cosine, measured)"
        elif set(outs) & no_q or any(a in no_q for a in acts(node)):
            why = "reads or writes a tensor kept float (quantizing it alone drops the embedding cosine)"
        float_ops.append((node.name, node.op_type, why))
    # the graph output: through trailing same-grid ops the int8 result leaves the graph as codes
    return GraphPlan(integer, list(dict.fromkeys(points)), shared, float_ops)


def quant_points(proto: Any, keep_float: Iterable[str] = (), float_tensors: Iterable[str] = ()) -> list[str]:
    """The tensors that get their own calibrated grid (see plan_graph)."""
    return plan_graph(proto, keep_float, float_tensors).points


def calibration_points(
    proto: Any, keep_float: Iterable[str] = (), float_tensors: Iterable[str] = ()
) -> list[str]:
    """The tensors whose statistics calibration needs: the quant points, and the output of every
    PReLU-as-Max, whose range widens its input's grid (prelu_ranges)."""
    points = quant_points(proto, keep_float, float_tensors)
    extra = [n.output[0] for n in proto.graph.node if is_prelu_max(n) and n.input[0] in points]
    return list(dict.fromkeys([*points, *extra]))


def calibrated_ranges(
    proto: Any, points: Iterable[str], stats: RangeCollector, method: str = "mse", bits: int = 8
) -> dict[str, tuple[float, float]]:
    """Each point's range from the calibration statistics, PReLU inputs widened by prelu_ranges."""
    return prelu_ranges(proto, {p: stats.range(p, method, bits) for p in points}, stats, method, bits)


def prelu_ranges(
    proto: Any,
    ranges: Mapping[str, tuple[float, float]],
    stats: RangeCollector,
    method: str = "mse",
    bits: int = 8,
) -> dict[str, tuple[float, float]]:
    """A PReLU-as-Max keeps x, a x and its output on x's grid (activation_plan). With negative slopes (or
    slopes above 1 on flipped channels) the output reaches beyond x's range, so that grid spans both:
    the slope conv's values below it lose the Max anyway (they are below x), and none lie above the
    output's top. The union costs a fraction of a bit against the output's own range, and the layer
    still rounds once."""
    out = dict(ranges)
    for node in proto.graph.node:
        x, y = node.input[0] if node.input else "", node.output[0]
        if is_prelu_max(node) and x in out and y in stats.lo:
            lo, hi = stats.range(y, method, bits)
            out[x] = (min(out[x][0], lo), max(out[x][1], hi))
    return out


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


def collect_stats(
    proto: Any, points: list[str], batches: Iterable[np.ndarray], into: RangeCollector | None = None
) -> RangeCollector:
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
    collector = into if into is not None else RangeCollector()
    for batch in batches:
        for outs in run_batched(sess, batch):  # one list of outputs per call
            if input_name in wanted:
                collector.update(input_name, batch)
            for name, value in zip(out_names, outs, strict=True):
                if name in wanted:
                    collector.update(name, value)
    return collector


def run_batched(sess: Any, batch: np.ndarray) -> list[list[np.ndarray]]:
    """sess.run on a batch, image by image when the graph has a static batch of 1 (shape arithmetic
    folded, onnx_float.export_float_onnx); outputs concatenated back along the batch axis."""
    inp = sess.get_inputs()[0]
    if inp.shape[0] != 1 or len(batch) == 1:
        return [sess.run(None, {inp.name: batch})]
    parts = [sess.run(None, {inp.name: batch[i : i + 1]}) for i in range(len(batch))]
    return [[np.concatenate(vals) for vals in zip(*parts, strict=True)]]


def activation_plan(
    proto: Any,
    ranges: Mapping[str, tuple[float, float]],
    bits: int = 8,
    dtype: str = "uint8",
    bits_override: Mapping[str, int] | None = None,
    keep_float: Iterable[str] = (),
    float_tensors: Iterable[str] = (),
) -> dict[str, QParams]:
    """Ranges -> QParams, clamping a ReLU6 output's range to [0, 6] so ORT can drop the Clip; same-grid
    outputs (reshape, transpose, ...) take their source's grid.

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
    for out, src in plan_graph(proto, keep_float, float_tensors).shared.items():
        if src in plan:
            plan[out] = plan[src]
    return plan


def is_prelu_relu(node: Any) -> bool:
    return node.op_type == "Relu" and node.name.endswith("/prelu_relu")


def is_prelu_max(node: Any) -> bool:
    return node.op_type == "Max" and node.name.endswith("/prelu_max") and len(node.input) == 2


def _clip_max(node: Any, proto: Any) -> float:
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    if len(node.input) > 2 and node.input[2] in inits:
        return float(numpy_helper.to_array(inits[node.input[2]]))
    return float("inf")


def weight_axis(node: Any) -> int:
    """Output-channel axis of a weighted node's constant weight (input 1)."""
    from onnx import helper

    from edgeface.quant_ops import onnx_rule

    if node.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    rule = onnx_rule(node.op_type)
    return 0 if rule is None or rule.weight_axis is None else rule.weight_axis


def build_qdq(
    proto: Any,
    act: Mapping[str, QParams],
    weight_bits: int = 8,
    weight_scale_override: Mapping[str, np.ndarray] | None = None,
    quantize_io: bool = True,
    float_convs: Iterable[str] = (),
    weight_bits_override: Mapping[str, int] | None = None,
    keep_float: Iterable[str] = (),
    float_tensors: Iterable[str] = (),
) -> tuple[Any, QParams | None, QParams | None]:
    """Insert Q/DQ (and Clip for narrowed grids) as plan_graph decides and quantize the weights.

    `weight_scale_override` maps a weighted node name to per-channel scales learned elsewhere (a QAT/PTQ
    plan); other layers get max-abs scales; `weight_bits_override` gives a layer its own bit width (a
    checkpoint's per-layer bits). Convs named in `float_convs` stay float, as do the nodes `keep_float`
    names (their inputs are dequantized, their output quantized for the next integer op).
    Returns (model, input qparams, output qparams); the latter two are None
    where the graph keeps a float input/output.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    float_convs = set(float_convs)
    gplan = plan_graph(
        proto, [*keep_float, *float_convs], float_tensors, {c: GROUPED_CONV_REASON for c in float_convs}
    )
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_inits: list[Any] = []
    added: set[str] = set()
    nodes: list[Any] = []
    overrides = dict(weight_scale_override or {})
    input_name = graph.input[0].name
    output_name = graph.output[0].name
    if any(n.name in float_convs and input_name in n.input for n in graph.node):
        quantize_io = False  # a float stem reads the float image: no integer graph input
        act = {k: v for k, v in act.items() if k != input_name}

    def const(name: str, value: np.ndarray) -> str:
        if name not in added:
            new_inits.append(numpy_helper.from_array(value, name))
            added.add(name)
        return name

    def keep_init(name: str) -> None:
        if name in inits and name not in added:
            const(name, inits[name])

    # where each quantized tensor's codes live: tensor -> integer tensor name
    qtensor: dict[str, str] = {}

    def qparams_consts(name: str) -> None:
        p = act[name]
        const(f"{name}_scale", np.array(p.scale, np.float32))
        const(f"{name}_zp", np.array(p.zero_point, p.np_dtype))

    def emit_quant(name: str, q_out: str | None = None, source: str | None = None) -> None:
        p = act[name]
        qparams_consts(name)
        s, z = f"{name}_scale", f"{name}_zp"
        q = q_out or f"{name}_q"
        if p.narrowed:
            nodes.append(
                helper.make_node("QuantizeLinear", [source or name, s, z], [q + "_wide"], name=f"{name}_Q")
            )
            lo = const(f"{name}_qmin", np.array(p.qmin, p.np_dtype))
            hi = const(f"{name}_qmax", np.array(p.qmax, p.np_dtype))
            nodes.append(helper.make_node("Clip", [q + "_wide", lo, hi], [q], name=f"{name}_QClip"))
        else:
            nodes.append(helper.make_node("QuantizeLinear", [source or name, s, z], [q], name=f"{name}_Q"))
        qtensor[name] = q

    dq_count: dict[str, int] = {}
    float_dq: dict[str, str] = {}

    def dq_for(name: str) -> str:
        """A fresh DequantizeLinear per consumer: ORT's node-unit matching wants DQs it can own."""
        k = dq_count.get(name, 0)
        dq_count[name] = k + 1
        out = f"{name}_dq{k}"
        qparams_consts(name)
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [qtensor[name], f"{name}_scale", f"{name}_zp"],
                [out],
                name=f"{name}_DQ{k}",
            )
        )
        return out

    def const_dq(name: str) -> str:
        """A float constant read by an integer op (the other side of an Add, say): its own uint8 grid."""
        v = np.asarray(inits[name], np.float32)
        p = activation_qparams(float(v.min(initial=0.0)), float(v.max(initial=0.0)), 8, "uint8")
        q = np.clip(np.round(v / p.scale) + p.zero_point, 0, 255).astype(np.uint8)
        qn = const(f"{name}_cq", q)
        sn = const(f"{name}_cscale", np.array(p.scale, np.float32))
        zn = const(f"{name}_czp", np.array(p.zero_point, np.uint8))
        out = f"{name}_cdq"
        if out not in added:
            added.add(out)
            nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=f"{name}_cDQ"))
        return out

    in_q = out_q = None
    if quantize_io and input_name in act:
        in_q = act[input_name]
        qparams_consts(input_name)
        qtensor[input_name] = input_name  # the graph input itself becomes the integer tensor
    elif input_name in act:
        emit_quant(input_name)

    for node in graph.node:
        inputs = list(node.input)
        integer = node.name in gplan.integer
        rule_kind = _kind_of(node, inits)
        if integer and is_prelu_relu(node):
            x = inputs[0]
            q_out = f"{node.output[0]}_q"
            nodes.append(helper.make_node("Max", [qtensor[x], f"{x}_zp"], [q_out], name=node.name))
            qtensor[node.output[0]] = q_out
            continue
        if integer and rule_kind == "same_grid":
            # runs on the codes: same values moved, same grid (ORT would drop a DQ/Q pair around it anyway)
            for i in inputs:
                keep_init(i)
            new = helper.make_node(
                node.op_type,
                [qtensor.get(i, i) for i in inputs],
                [f"{o}_q" for o in node.output],
                name=node.name,
            )
            new.attribute.extend(node.attribute)
            nodes.append(new)
            for o in node.output:
                qtensor[o] = f"{o}_q"
            continue
        if integer and rule_kind == "weighted":
            x = inputs[0]
            w = inits[inputs[1]]
            axis = weight_axis(node)
            wbits = (weight_bits_override or {}).get(node.name, weight_bits)
            scales = overrides.get(node.name)
            wt = np.moveaxis(w, axis, 0)
            scales = weight_scales(wt, wbits) if scales is None else np.asarray(scales, np.float32)
            if len(inputs) > 2 and inputs[2] and x in act and act[x].scale > 0:
                # The int32 bias lives on act_scale x weight_scale. A channel whose weights are all zero
                # (pruned or dead) but whose bias is not gets a weight scale at which that bias fits int32;
                # its weights stay 0 on any scale, so the channel outputs its bias instead of ~0.
                fit = np.abs(inits[inputs[2]].astype(np.float64)) / (act[x].scale * (2**31 - 2))
                scales = np.maximum(scales, fit).astype(np.float32)
            qw = np.moveaxis(quantize_weight(wt, scales, wbits), 0, axis)
            wq = const(f"{node.name}.weight_quantized", np.ascontiguousarray(qw))
            ws = const(f"{node.name}.weight_scale", scales)
            wz = const(f"{node.name}.weight_zp", np.zeros_like(scales, dtype=np.int8))
            w_dq = f"{node.name}.weight_dq"
            nodes.append(
                helper.make_node("DequantizeLinear", [wq, ws, wz], [w_dq], name=f"{node.name}_wDQ", axis=axis)
            )
            if x not in qtensor:
                raise KeyError(f"input {x} of {node.name} has no quantization parameters")
            src = x
            inputs[0] = dq_for(src)
            inputs[1] = w_dq
            if len(inputs) > 2 and inputs[2]:
                b = inits[inputs[2]]
                bscale = (act[src].scale * scales).astype(np.float32)
                with np.errstate(divide="ignore", invalid="ignore"):  # zero scale and zero bias: 0
                    qb = np.nan_to_num(np.round(b.astype(np.float64) / bscale.astype(np.float64)), nan=0.0)
                qb = np.clip(qb, -(2**31) + 1, 2**31 - 1).astype(np.int32)  # float64: the bounds are exact
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
        elif integer:
            for j, name in enumerate(inputs):
                if name in qtensor:
                    inputs[j] = dq_for(name)
                elif name in inits and inits[name].dtype == np.float32 and node.op_type not in ("Clip",):
                    inputs[j] = const_dq(name)
                else:
                    keep_init(name)
        else:  # a float op: one shared DQ per tensor, so float fusions (GELU, LayerNorm) still match
            for j, name in enumerate(inputs):
                if name in qtensor:
                    if name not in float_dq:
                        float_dq[name] = dq_for(name)
                    inputs[j] = float_dq[name]
                else:
                    keep_init(name)
        if integer and is_prelu_max(node) and all(i in qtensor for i in node.input) and node.output[0] in act:
            # integer Max straight on the two uint8 tensors, which share one grid: no DQ, no Q
            nodes = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.output[0] in inputs)]
            q_out = node.output[0] + "_q"
            nodes.append(helper.make_node("Max", [qtensor[i] for i in node.input], [q_out], name=node.name))
            qtensor[node.output[0]] = q_out
            qparams_consts(node.output[0])
            continue
        if (
            integer
            and node.op_type in ACTIVATIONS
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
        for o in node.output:
            if o in act and o in gplan.points:
                emit_quant(o)

    graph_inputs = list(graph.input)
    if in_q is not None:
        shape = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        graph_inputs = [helper.make_tensor_value_info(input_name, _onnx_dtype(in_q), shape)]
    graph_outputs = list(graph.output)
    if output_name in qtensor:
        codes = qtensor[output_name]
        if quantize_io:  # the embedding leaves the graph as codes; the runtime dequantizes it
            for n in nodes:  # the float tensor of that name (a Gemm's output before its Q) is renamed
                n.output[:] = [f"{output_name}_float" if o == output_name else o for o in n.output]
                n.input[:] = [f"{output_name}_float" if i == output_name else i for i in n.input]
            for n in nodes:
                n.output[:] = [output_name if o == codes else o for o in n.output]
                n.input[:] = [output_name if i == codes else i for i in n.input]
            out_q = act[output_name]
            shape = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
            graph_outputs = [helper.make_tensor_value_info(output_name, _onnx_dtype(out_q), shape)]
        elif not any(output_name in n.output for n in nodes):
            qtensor_out = dq_for(output_name)
            nodes.append(helper.make_node("Identity", [qtensor_out], [output_name], name="output_float"))
    new_graph = helper.make_graph(nodes, graph.name, graph_inputs, graph_outputs, new_inits)
    model = helper.make_model(new_graph, opset_imports=list(proto.opset_import), producer_name="edgeface")
    model.ir_version = proto.ir_version
    _prune_unused(model)
    onnx.checker.check_model(model)
    return model, in_q, out_q


def _kind_of(node: Any, inits: Mapping[str, Any]) -> str:
    from edgeface.quant_ops import onnx_rule

    rule = onnx_rule(node.op_type)
    if rule is None:
        return "float"
    if rule.kind == "weighted" and (len(node.input) < 2 or node.input[1] not in inits):
        return rule.activation_kind or "float"
    return rule.kind


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
