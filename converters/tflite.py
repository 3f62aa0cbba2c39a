"""TFLite artifacts without TensorFlow: litert-torch converts the float model, ai-edge-quantizer quantizes.

The float graph comes from litert-torch (NHWC input through `to_channel_last_io`, so no transpose runs on the
device). int8 is ai-edge-quantizer's static recipe (int8 activations, int8 symmetric per-channel weights on
CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, int32 biases, int8 graph input and output), which XNNPACK
runs end to end. The activation grids it is given are ours, not its min/max calibration: the scales a
checkpoint of `edgeface quantize` learned where there is one, else every activation tensor of the float
TFLite graph is sampled on the calibration images and its range chosen by the same MSE search as the ONNX
export (qdq.RangeCollector), so both artifacts of one export agree. Weight scales are imposed afterwards
(tflite_learned.py), since the quantizer always derives its own. w6a6 holds weights to [-31, 31] and every
activation but the graph's ends and the float ones to 64 codes (tflite_learned.py says how). litert-torch's
PT2E quantizer was measured too (docs/speed.md); it needs a second, slower conversion of a prepared graph.

Before quantization, computations on constants are folded (tflite_fold.py), and tflite_mixed.py decides
which ops stay float: a DIV by rule, and, when the fully fake-quantized graph misses the parity trigger
(hybrids with outlier residual streams, not plain CNNs), the ops of the tensors a measured sensitivity pass
keeps float; w6a6 keeps the same tensors float as int8 (measured on the 8-bit grids, as the ONNX export
does), unless a checkpoint decided its float layers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
from edgeface.converters import qdq
from edgeface.converters import tflite_mixed as mixed
from edgeface.converters.sensitivity import SENSITIVITY_IMAGES
from edgeface.converters.staging import native_section
from edgeface.converters.tflite_fold import fold_constants

from edgeface.errors import EdgefaceError, ModelError
from edgeface.quiet import native_quiet
from edgeface.spec import ModelSpec, TensorQuant

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def float_tflite(net: Any, spec: ModelSpec) -> bytes:
    """NHWC float32 TFLite flatbuffer of an eval-mode nn.Module, its PReLUs rewritten first
    (torch_rewrite.prelu_as_max without calibration: channels negated, not equalized)."""
    from edgeface.converters.torch_rewrite import prelu_as_max

    return _convert(prelu_as_max(net)[0], spec)


def _convert(net: Any, spec: ModelSpec) -> bytes:
    """litert-torch conversion of a module whose PReLUs are already rewritten."""
    import torch

    with native_quiet():  # litert-converter's native library logs "oneDNN custom operations are on" on load
        import litert_torch

    h, w = spec.input_size
    sample = (torch.zeros(1, h, w, spec.channels),)
    wrapped = litert_torch.to_channel_last_io(net.eval(), args=[0]).eval()
    # litert-torch prints its progress on stdout, which belongs to `--json`, and its converter logs through
    # absl on fd 2: both only with `edgeface -v` (native_quiet replays them if the conversion fails)
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), native_section(), native_quiet():
        try:
            edge = litert_torch.convert(wrapped, sample)
        except (RuntimeError, ValueError) as e:
            if "view" not in str(e):
                raise
            # `x.view(x.size(0), -1)` on a tensor litert-torch keeps channels-last cannot be a view; feeding
            # the model a contiguous NCHW copy of the NHWC input (one TRANSPOSE in the graph) keeps every
            # tensor contiguous, as the model's author assumed
            edge = litert_torch.convert(_ContiguousNCHW(net).eval(), sample)
        return bytes(edge.model_content())


def _contiguous_nchw_class() -> Any:
    import torch

    class ContiguousNCHW(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            # clone, not contiguous(): a one-channel permute counts as contiguous but keeps channels-last
            # strides, which the first conv passes on to its output
            return self.net(x.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format))

    return ContiguousNCHW


def _ContiguousNCHW(net: Any) -> Any:  # noqa: N802 - a class built lazily (no torch at import)
    return _contiguous_nchw_class()(net)


def _interpreter(data: bytes, preserve: bool = False) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    with native_section(), native_quiet():  # the XNNPACK delegate banner on fd 2
        interp = Interpreter(model_content=data, num_threads=1, experimental_preserve_all_tensors=preserve)
        interp.allocate_tensors()
    return interp


def activation_stats(data: bytes, batches: Iterable[np.ndarray]) -> tuple[qdq.RangeCollector, list[str]]:
    """Sample every non-constant float tensor (graph input and op outputs) over the calibration images."""
    interp = _interpreter(data, preserve=True)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    inp = interp.get_input_details()[0]
    wanted = [inp["index"]] + [o for op in interp._get_ops_details() for o in op["outputs"] if o >= 0]
    wanted = [i for i in dict.fromkeys(wanted) if details[i]["dtype"] == np.float32]
    collector = qdq.RangeCollector()
    for batch in batches:
        for x in batch:
            interp.set_tensor(inp["index"], x[None].astype(np.float32))
            interp.invoke()
            for i in wanted:
                collector.update(details[i]["name"], interp.get_tensor(i))
    return collector, [details[i]["name"] for i in wanted]


_FLOAT_CACHE: dict[str, Any] = {}
CALIB_IMAGES = 96  # the float interpreter with every tensor preserved runs without XNNPACK: keep it short


def build_tflite(
    net: Any,
    spec: ModelSpec,
    precision: str,
    batches: list[np.ndarray],
    plan: Any = None,
    method: str = "mse",
) -> tuple[bytes, ModelSpec, dict[str, Any]]:
    """(flatbuffer without spec, spec, info) for fp32, int8 or w6a6.

    `plan` is converters.learned.plan_from_quantized's result for a checkpoint of `edgeface quantize`: its
    activation scales and per-channel weight scales are kept; tensors it does not cover are calibrated, and
    the sensitivity pass keeps float what int8 cannot carry, as without a checkpoint.
    """
    if precision not in ("fp32", "int8", "w6a6"):
        raise EdgefaceError(f"unknown TFLite precision '{precision}' (fp32, int8, w6a6)")
    from edgeface.models.registry import scripted_hint

    if (hint := scripted_hint(net, "TFLite export")) is not None:
        raise ModelError(hint)
    key = id(net)
    # PReLU channels are equalized on the calibration images unless a checkpoint brings learned scales
    # (`edgeface quantize` equalized it before learning them); channels are negated for both (a symmetric
    # weight grid holds a negated channel); exact in float, so the fp32 artifact shares the equalized graph
    equalize = bool(batches) and not plan
    if _FLOAT_CACHE.get("key") != key or (
        equalize and precision != "fp32" and not _FLOAT_CACHE.get("calibrated")
    ):  # every precision of one export shares the slow conversion
        from edgeface.converters.torch_rewrite import prelu_as_max

        _FLOAT_CACHE.clear()
        calib = [b.transpose(0, 3, 1, 2) for b in batches] if equalize else None
        rewritten, rewrite = prelu_as_max(net, calib)
        _FLOAT_CACHE.update(
            key=key,
            data=fold_constants(_convert(rewritten, spec))[0],
            calibrated=equalize,
            equalized=len(rewrite.equalized),
        )
    data = _FLOAT_CACHE["data"]
    spec = spec.replace(layout="NHWC")
    if precision == "fp32":
        # a quantized checkpoint's spec carries the integer artifact's input/output grids: not a float graph's
        float_spec = spec.replace(precision="fp32", input_quant=None, output_quant=None)
        return data, float_spec, {"per_channel_layers": 0, "quantizer": None}
    from ai_edge_quantizer import quantizer, recipe
    from edgeface.converters import tflite_learned as tl

    bits = 6 if precision == "w6a6" else 8
    quant_plan = plan.get("plan") if plan else None
    learned = tl.match_plan(data, quant_plan, plan.get("layers"), plan.get("adds")) if quant_plan else None
    if learned is not None and bits < 8 and all(b >= 8 for _, b in learned.weights):
        raise EdgefaceError(
            "the checkpoint was quantized at 8 bits; export it with --int8, or quantize it with --bits w6a6 "
            "for a w6a6 artifact"
        )
    if "stats" not in _FLOAT_CACHE:
        images = np.concatenate(batches)[:CALIB_IMAGES]
        _FLOAT_CACHE["stats"] = activation_stats(data, [images])
    stats, _ = _FLOAT_CACHE["stats"]
    targets = activation_targets(data, stats, bits, learned, method)
    n_activations = len(targets)
    kept: list[tuple[str, float]] = []
    base = {**mixed.rule_float_ops(data), **(learned.float_ops if learned is not None else {})}
    if bits == 8 or learned is None:
        # int8 with learned scales too: the checkpoint rounds only the tensors its integer layers read, while
        # ai-edge-quantizer rounds every tensor it can (a decomposed LayerNorm's variance, a Linear's
        # output), so what int8 cannot carry here is found the same way as without a checkpoint; a plain
        # CNN's fully quantized pass passes the trigger and nothing changes. w6a6 keeps float what int8
        # cannot carry, chosen on the 8-bit grids as the ONNX export does (a w6a6 checkpoint's float layers
        # are its own choice)
        grids = targets if bits == 8 else activation_targets(data, stats, 8, None, method)
        kept = _fragile(data, grids, batches, base)
    float_ops = mixed.plan_float_ops(data, base, [t for t, _ in kept])
    if bits < 8:
        data, float_ops, extra = _with_clamps(data, targets, float_ops)
        targets.update(extra)
    qsvs = {}
    graph = tl.read(data).subgraphs[0]
    # of each tensor's rank: the quantizer gives a clamp's constant (and any constant sharing a grid) these
    # very arrays as its scale, and refuses ranks that differ (a rank-1 or rank-3 tensor of a hybrid)
    rank = {tl.tensor_name(t): max(1, len(t.shape if t.shape is not None else ())) for t in graph.tensors}
    for name, t in targets.items():
        lo, hi = t.int8_range()
        shape = (1,) * rank.get(name, 4)
        qsvs[name] = {
            "min": np.array(lo, np.float32).reshape(shape),
            "max": np.array(hi, np.float32).reshape(shape),
        }
    q = quantizer.Quantizer(data, recipe.static_wi8_ai8())
    keep_regex = mixed.no_quantize_regex(data, float_ops)
    if keep_regex is not None:
        q.update_quantization_recipe(keep_regex, "*", None, "no_quantize")
    with contextlib.redirect_stdout(sys.stderr), native_section(), native_quiet():  # its bars, absl lines
        result = q.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
    if learned is not None:
        scales = [(s, min(b, 8)) for s, b in learned.weights]
    else:
        scales = [(None, bits)] * len(tl.weighted_ops(tl.read(data))[0])
    out, narrow_bytes = tl.impose_weights(bytes(result.quantized_model), data, scales)
    if bits < 8:
        out, moved = tl.clamps_to_requantize(out, targets)
        targets.update(moved)
    off = tl.check_targets(out, targets)
    if off:
        raise ModelError(
            f"ai-edge-quantizer did not keep the activation scales asked for on {len(off)} tensors "
            f"(first: {off[0]})"
        )
    info = inspect_tflite(out)
    weight_quant = (
        "int8 symmetric per-channel (CONV_2D axis 0, DEPTHWISE_CONV_2D axis 3, FULLY_CONNECTED axis 0)"
    )
    if bits < 8:
        wide = sum(b >= 8 for _, b in scales)
        weight_quant = (
            "6-bit grid [-31, 31] in int8 storage"
            + (f" ({wide} of {len(scales)} layers at 8 bits, as learned)" if wide else "")
            + ", "
            + weight_quant.removeprefix("int8 ")
        )
    new_spec = spec.replace(
        precision="w8a8" if bits == 8 else "w6a6",
        input_quant=info["input_quant"],
        output_quant=info["output_quant"],
        weight_quant=weight_quant,
    )
    build_info = {
        "per_channel_layers": info["per_channel_layers"],
        "quantizer": "ai-edge-quantizer" + (" + learned scales" if learned is not None else ""),
        "int8_weight_bytes": info["int8_weight_bytes"],
        "float_ops": info["float_op_list"],  # export.py reports them, and warns when int8 is not faster
        "outside_delegate": info["outside_delegate"],
    }
    reasons = {}
    model = tl.read(data)
    for k, why in float_ops.items():
        reasons.setdefault(tl.op_name(model, model.subgraphs[0].operators[k]), why)
    if reasons:
        build_info["float_op_reasons"] = reasons
    if kept:
        build_info["kept_float_tensors"] = {t: round(c, 4) for t, c in kept}
    if learned is not None:  # how much of the graph the checkpoint's scales cover (the rest: calibrated)
        build_info["learned_activation_tensors"] = len(learned.activations)
        build_info["activation_tensors"] = n_activations
    if _FLOAT_CACHE.get("equalized"):
        build_info["prelu_layers_equalized"] = _FLOAT_CACHE["equalized"]
    if bits < 8:  # only weights on the 6-bit grid pack; PReLU slopes and 8-bit layers stay int8
        build_info["int8_weight_bytes"] = narrow_bytes
        build_info["grid_clamps"] = len(extra)
    return out, new_spec, build_info


def _fragile(
    data: bytes, targets: dict[str, Any], batches: list[np.ndarray], base: dict[int, str]
) -> list[tuple[str, float]]:
    """tflite_mixed.fragile_tensors on the first calibration images, once for every precision of an export."""
    if "fragile" not in _FLOAT_CACHE:
        images = np.concatenate(batches)[:SENSITIVITY_IMAGES]
        _FLOAT_CACHE["fragile"] = mixed.fragile_tensors(data, targets, images, base)[0]
    return _FLOAT_CACHE["fragile"]


def _with_clamps(
    data: bytes, targets: dict[str, Any], float_ops: dict[int, str]
) -> tuple[bytes, dict[int, str], dict[str, Any]]:
    """(float graph with the w6a6 clamps, its float ops, the clamps' targets). A tensor that no int8 op
    writes or reads (kept float, or inside a float region) has no grid to hold and gets no clamp: a kept
    tensor's clamp would put it back on a grid for its readers, and the others would be float MAXIMUMs
    that cut them at the low end of a 6-bit range for nothing. A float tensor an int8 op reads keeps its
    clamp, which reads only float and so stays float (tflite_mixed.spread_float): its reader's grid still
    holds 64 codes."""
    from edgeface.converters import tflite_learned as tl

    names = list(targets)
    untouched = mixed.float_points(data, float_ops, names) if float_ops else set()
    held = {n: targets[n] for k, n in enumerate(names) if k not in untouched}
    clamped, extra = tl.insert_clamps(data, held)
    return clamped, mixed.spread_float(clamped, tl.past_clamps(clamped, float_ops)), extra


def activation_targets(
    data: bytes, stats: qdq.RangeCollector, bits: int, learned: Any, method: str = "mse"
) -> dict[str, Any]:
    """Tensor name -> tflite_learned.Target for every activation of the float graph, in execution order.

    Learned scales win; the rest come from the calibration statistics. As in the ONNX export, the graph's
    input and output stay 8-bit in w6a6; ops that pass codes through (pad, reshape, max-pool) keep their
    input's grid, and a PReLU-as-max lives on its input's grid (its negative side must not be clipped before
    the slope is applied), widened to span the max's output too (negative slopes reach beyond x's range; as
    qdq.prelu_ranges for ONNX), as does max(x, eps). Where ai-edge-quantizer decides a grid itself, the
    target is what it will do, so that check_targets stays exact: softmax/logistic/tanh write the kernel's
    fixed grid, and an input of a concat (which puts its inputs on its output's grid) that only the concat
    reads is written on the concat's grid by its producer.
    """
    from edgeface.converters import tflite_learned as tl

    model = tl.read(data)
    graph = model.subgraphs[0]
    name = [tl.tensor_name(t) for t in graph.tensors]
    ends = {name[i] for i in graph.inputs} | {name[i] for i in graph.outputs}
    producers = {int(op.outputs[0]): op for op in graph.operators}
    for i in graph.outputs:  # through trailing reshapes
        op = producers.get(int(i))
        while op is not None and tl.op_name(model, op) in tl.SAME_AS_INPUT:
            ends.add(name[op.inputs[0]])
            op = producers.get(int(op.inputs[0]))
    known = learned.activations if learned is not None else {}
    users = tl.consumers(graph)
    widen: dict[str, str] = {}  # PReLU-as-max input -> its output, whose range the input's grid spans
    for k, op in enumerate(graph.operators):
        if tl.is_prelu_slope(model, graph, k, users) and tl.op_name(model, op) == "DEPTHWISE_CONV_2D":
            m = graph.operators[users[int(op.outputs[0])][0]]
            if tl.op_name(model, m) == "MAXIMUM":
                widen[name[op.inputs[0]]] = name[m.outputs[0]]

    def target(n: str) -> Any:
        if n in known:
            s, z, qmin, b = known[n]
            return tl.from_affine(s, z, qmin, b, hold=bits < 8 and n not in ends)
        b = 8 if n in ends else bits
        lo, hi = stats.range(n, method, b)
        if n in widen:  # see torch_rewrite: the max's output reaches beyond x's range for slopes < 0
            y_lo, y_hi = stats.range(widen[n], method, b)
            lo, hi = min(lo, y_lo), max(hi, y_hi)
        p = qdq.activation_qparams(lo, hi, bits=b, dtype="int8")
        return tl.from_affine(p.scale, p.zero_point, p.qmin, b, hold=b < 8)

    readers: dict[str, int] = {}
    for op in graph.operators:
        for i in op.inputs:
            if i >= 0:
                readers[name[i]] = readers.get(name[i], 0) + 1
    requantizes: set[str] = set()  # outputs of ops that write any grid asked for
    targets = {name[i]: target(name[i]) for i in graph.inputs}
    for op in graph.operators:
        kind = tl.op_name(model, op)
        ins = [name[i] for i in op.inputs if i >= 0 and name[i] in targets]
        out = name[op.outputs[0]]
        if kind in tl.SAME_AS_INPUT and ins:
            for o in op.outputs:  # SPLIT / UNPACK: every output keeps the input's grid
                targets[name[o]] = targets[ins[0]]
        elif kind == "MAXIMUM" and ins:  # max(x, a x) or max(x, eps): on x's grid, as the quantizer wants
            x = next((i for i in ins if i in widen), ins[0])
            targets[out] = targets[x]
            for i in ins:
                targets[i] = targets[x]
        elif kind in tl.FIXED_OUTPUT_GRID:
            targets[out] = tl.Target(*tl.FIXED_OUTPUT_GRID[kind])
        else:
            targets[out] = target(out)
            requantizes.add(out)
        if kind in tl.SAME_AS_OUTPUT:
            # an input only this op reads is written on the output's grid by its producer (no requantize);
            # the quantizer requantizes the others, which keep their own grid
            for i in ins:
                if i in requantizes and readers.get(i) == 1 and i not in known and i not in ends:
                    targets[i] = targets[out]
    return targets


def outside_delegate(ops: list[dict[str, Any]]) -> list[str]:
    """Names of the ops XNNPACK's delegate did not take, from an allocated interpreter's op list.

    LiteRT runs them with its own kernels between delegate partitions; for int8 those are reference code
    (RELU, HARD_SWISH and MAXIMUM alone cost an int8 graph more than all its convolutions, measured with
    benchmarks/litert_ops.py), and the delegate takes the same ops on a phone, so a slow int8 artifact
    whose ops are all integer is explained by this list, not by the CPU. The interpreter lists each
    DELEGATE node after the ops; an op is delegated when it lies between a DELEGATE node's outputs and
    its inputs."""
    producer = {t: k for k, op in enumerate(ops) if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    taken: set[int] = set()
    for node in ops:
        if node["op_name"] != "DELEGATE":
            continue
        stop, todo = set(node["inputs"]), list(node["outputs"])
        while todo:
            k = producer.get(todo.pop())
            if k is not None and k not in taken:
                taken.add(k)
                todo.extend(t for t in ops[k]["inputs"] if t >= 0 and t not in stop)
    return [op["op_name"] for k, op in enumerate(ops) if op["op_name"] != "DELEGATE" and k not in taken]


def inspect_tflite(data: bytes) -> dict[str, Any]:
    """Per-channel weight layers, float operators left, ops outside the XNNPACK delegate, and the graph's
    input/output quantization."""
    interp = _interpreter(data)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    per_channel, weight_bytes, float_ops = 0, 0, []
    ops = interp._get_ops_details()
    for op in ops:
        if op["op_name"] == "DELEGATE":  # a delegate node repeats the ops it took, which are listed too
            continue
        ins = [details[i] for i in op["inputs"] if i >= 0]
        if op["op_name"] in WEIGHTED_OPS and len(ins) > 1:
            w = ins[1]
            if len(w["quantization_parameters"]["scales"]) > 1:
                per_channel += 1
            if w["dtype"] == np.int8:
                weight_bytes += int(np.prod(w["shape"]))
        if any(t["dtype"] == np.float32 for t in ins) and op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
            float_ops.append(op["op_name"])

    def tq(d: dict[str, Any]) -> TensorQuant | None:
        scale, zp = d["quantization"]
        if d["dtype"] not in (np.int8, np.uint8) or not scale:
            return None
        return TensorQuant(scale=float(scale), zero_point=int(zp), dtype=np.dtype(d["dtype"]).name)

    return {
        "per_channel_layers": per_channel,
        "int8_weight_bytes": weight_bytes,
        "float_ops": sorted(set(float_ops)),
        "float_op_list": float_ops,
        "outside_delegate": outside_delegate(ops),
        "input_quant": tq(interp.get_input_details()[0]),
        "output_quant": tq(interp.get_output_details()[0]),
    }
