"""Mixed precision in TFLite: which ops ai-edge-quantizer must leave float, by rule and by measurement.

By rule: a DIV. The int8 kernel aborts the interpreter when a divisor code equals its zero point, which any
grid that holds the divisor's calibrated range can reach; float, with the op that guards its divisor (a
MAXIMUM or ADD with a constant: `x / max(norm, eps)`) float too, the divisor stays >= eps.

By measurement, as the ONNX export does (sensitivity.py): a CNN-transformer hybrid's residual streams
carry outlier channels that one per-tensor int8 grid cannot hold. Every activation tensor p of the float
TFLite graph is replaced by p + f_p * (DEQUANTIZE(QUANTIZE(p)) - p) on the grid it will get in the int8
artifact (`activation_targets`), f_p a scalar graph input, so one interpreter runs the float graph, the
fully fake-quantized one, or one tensor quantized alone. When the full pass stays at or above the trigger
nothing is kept float (plain CNNs: the int8 artifact is exactly the one built without this module).
A tensor kept float has its producer and every reader left float; a reader that only moves codes
(reshape, slice, transpose: `tflite_learned.SAME_AS_INPUT`) writes the same values, so its output is
kept float the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

DIVISOR_GUARDS = ("MAXIMUM", "ADD")
# the fake-quantized pass leaves out weight rounding and the int8 kernels' own rounding, which cost
# EdgeFace-XS about 0.002 more on held-out faces: a target of 0.996 gave 0.9940 (docs/export_hybrid.md)
TARGET = 0.998
FLAG = "edgeface_fq_flag"
# int8 ops that XNNPACK's delegate leaves to TFLite's reference kernels, against its own float kernels, each
# timed alone on EdgeFace-XS (benchmarks/litert_ops.py, docs/export_hybrid.md): kept float once a graph
# has float ops anyway, never in a fully integer one
SLOW_INT8 = {
    "SQUARED_DIFFERENCE": "no XNNPACK int8 kernel (0.06x its float time)",
    "RSQRT": "no XNNPACK int8 kernel (0.04x its float time)",
    "SUB": "slower in int8 than in float here (0.31x)",
    "BATCH_MATMUL": "no XNNPACK int8 kernel (0.24x its float time)",
    "SOFTMAX": "no XNNPACK int8 kernel (0.52x its float time)",
}


@functools.lru_cache(maxsize=2)  # the scan asks for the same graph's structure at every step
def _graph(data: bytes) -> tuple[Any, Any, list[str], dict[int, int], dict[int, list[int]]]:
    from edgeface.converters import tflite_learned as tl

    model = tl.read(data)
    graph = model.subgraphs[0]
    names = [tl.tensor_name(t) for t in graph.tensors]
    return model, graph, names, tl.writers(graph), tl.consumers(graph)


def rule_float_ops(data: bytes) -> dict[int, str]:
    """Op index -> why it stays float, for ops no calibration can make safe in int8."""
    from edgeface.converters import tflite_learned as tl

    model, graph, _, producer, _ = _graph(data)
    keep: dict[int, str] = {}
    for k, op in enumerate(graph.operators):
        if tl.op_name(model, op) != "DIV":
            continue
        keep[k] = "int8 DIV aborts on a divisor at its zero point"
        i = int(op.inputs[1])
        while i in producer:  # back through code-moving ops to the guard of the divisor, if any
            p = producer[i]
            kind = tl.op_name(model, graph.operators[p])
            if kind in tl.SAME_AS_INPUT:
                keep[p] = "moves a float divisor"
                i = int(graph.operators[p].inputs[0])
                continue
            ins = [int(j) for j in graph.operators[p].inputs if j >= 0]
            if kind in DIVISOR_GUARDS and any(tl.is_const(model, graph, j) for j in ins):
                keep[p] = "guards a divisor away from zero (float, so the guard survives)"
            break
    return keep


def spread_float(data: bytes, ops: Mapping[int, str]) -> dict[int, str]:
    """Grow a non-empty set of float ops where int8 only costs time: ops XNNPACK runs in float but not in
    int8 (SLOW_INT8), then, until nothing changes, every op without weights whose activation inputs all
    come from float ops (in int8 it would need a QUANTIZE in front and a DEQUANTIZE behind: a decomposed
    LayerNorm between a float residual stream and a float Linear)."""
    from edgeface.converters import tflite_learned as tl

    out = dict(ops)
    if not out:
        return out
    model, graph, _, producer, _ = _graph(data)
    kinds = [tl.op_name(model, op) for op in graph.operators]
    for k, kind in enumerate(kinds):
        if kind in SLOW_INT8:
            out.setdefault(k, SLOW_INT8[kind])
    changed = True
    while changed:
        changed = False
        for k, op in enumerate(graph.operators):
            if k in out or kinds[k] in tl.WEIGHTED_OPS:
                continue
            act = [int(i) for i in op.inputs if i >= 0 and not tl.is_const(model, graph, int(i))]
            if act and all(i in producer and producer[i] in out for i in act):
                out[k] = "reads only float tensors (int8 would add a QUANTIZE and a DEQUANTIZE)"
                changed = True
    return out


def float_ops_for(data: bytes, tensors: Iterable[str]) -> set[int]:
    """Ops to leave float so that these tensors never pass through an int8 grid."""
    from edgeface.converters import tflite_learned as tl

    model, graph, names, producer, readers = _graph(data)
    index = {n: i for i, n in enumerate(names)}
    ops: set[int] = set()
    todo = [index[t] for t in tensors if t in index]
    seen: set[int] = set()
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        if i in producer:
            ops.add(producer[i])
        for r in readers.get(i, []):
            ops.add(r)
            if tl.op_name(model, graph.operators[r]) in tl.SAME_AS_INPUT:
                todo.extend(int(o) for o in graph.operators[r].outputs)
    return ops


def plan_float_ops(data: bytes, base: Mapping[int, str], tensors: Iterable[str]) -> dict[int, str]:
    """The ops left float when `tensors` are kept float on top of the `base` ops (rule_float_ops)."""
    ops = dict(base)
    for k in sorted(float_ops_for(data, tensors)):
        ops.setdefault(k, "keeps a tensor that int8 cannot carry float (sensitivity pass)")
    return spread_float(data, ops)


def float_points(data: bytes, ops: Iterable[int], points: Sequence[str]) -> set[int]:
    """Indices of the points that no int8 grid touches with these ops float: producer and readers float."""
    _, _, names, producer, readers = _graph(data)
    index = {n: i for i, n in enumerate(names)}
    ops = set(ops)
    return {
        k
        for k, p in enumerate(points)
        if producer.get(index[p]) in ops and all(r in ops for r in readers.get(index[p], []))
    }


def no_quantize_regex(data: bytes, ops: Iterable[int]) -> str | None:
    """A regex matching exactly these ops' ai-edge-quantizer scopes (their output names, each followed by
    ';'), for a NO_QUANTIZE entry in the recipe."""
    _, graph, names, _, _ = _graph(data)
    scopes = sorted({"".join(names[int(o)] + ";" for o in graph.operators[k].outputs if o >= 0) for k in ops})
    scopes = [s for s in scopes if s]
    if not scopes:
        return None
    return "^(?:" + "|".join(re.escape(s) for s in scopes) + ")$"


def sensitivity_points(data: bytes, targets: Mapping[str, Any]) -> list[str]:
    """The tensors whose grid adds error of its own: every target but the graph input and the outputs of
    code-moving ops (on their input's grid already), in execution order."""
    from edgeface.converters import tflite_learned as tl

    model, graph, names, _, _ = _graph(data)
    skip = {names[int(i)] for i in graph.inputs}
    pts = []
    for op in graph.operators:
        if tl.op_name(model, op) in tl.SAME_AS_INPUT:
            continue
        for o in op.outputs:
            n = names[int(o)]
            if n in targets and n not in skip:
                pts.append(n)
    return list(dict.fromkeys(pts))


def flagged_graph(data: bytes, targets: Mapping[str, Any], points: Sequence[str]) -> bytes:
    """The float graph with every point p read as p + f_k * (DEQUANTIZE(QUANTIZE(p)) - p), f_k the scalar
    graph input `edgeface_fq_flag{k}`."""
    from ai_edge_litert import schema_py_generated as schema
    from edgeface.converters import tflite_learned as tl

    model = tl.read(data)
    graph = model.subgraphs[0]
    names = [tl.tensor_name(t) for t in graph.tensors]
    index = {n: i for i, n in enumerate(names)}
    B = schema.BuiltinOperator

    def opcode(builtin: int, version: int = 1) -> int:
        for j, c in enumerate(model.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin and c.version == version:
                return j
        c = schema.OperatorCodeT()
        c.builtinCode = builtin
        c.deprecatedBuiltinCode = min(builtin, 127)
        c.version = version
        model.operatorCodes.append(c)
        return len(model.operatorCodes) - 1

    def tensor(name: str, like: Any, ttype: int, quant: tuple[float, int] | None = None) -> int:
        t = schema.TensorT()
        t.shape = np.array(like.shape, np.int32)
        t.type, t.buffer, t.name = ttype, 0, name.encode()
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale = np.array([quant[0]], np.float32)
            q.zeroPoint = np.array([quant[1]], np.int64)
            t.quantization = q
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def op(code: int, ins: list[int], out: int, opt_type: int = 0, opt: Any = None) -> Any:
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, np.array(ins, np.int32), np.array([out], np.int32)
        o.builtinOptionsType, o.builtinOptions = opt_type, opt
        return o

    q_code, dq_code = opcode(B.QUANTIZE), opcode(B.DEQUANTIZE)
    sub_code, mul_code, add_code = opcode(B.SUB), opcode(B.MUL), opcode(B.ADD)
    flags, blocks, renamed = [], {}, {}
    for k, p in enumerate(points):
        i = index[p]
        t = graph.tensors[i]
        tgt = targets[p]
        f = schema.TensorT()
        f.shape, f.type, f.buffer, f.name = np.array([1], np.int32), 0, 0, f"{FLAG}{k}".encode()
        graph.tensors.append(f)
        fi = len(graph.tensors) - 1
        flags.append(fi)
        qi = tensor(f"{p}/fq_q", t, 9, (tgt.scale, tgt.zero_point))  # int8
        dqi = tensor(f"{p}/fq_dq", t, 0)
        di = tensor(f"{p}/fq_d", t, 0)
        fdi = tensor(f"{p}/fq_fd", t, 0)
        outi = tensor(f"{p}/fq_out", t, 0)
        blocks[i] = [
            op(q_code, [i], qi, schema.BuiltinOptions.QuantizeOptions, schema.QuantizeOptionsT()),
            op(dq_code, [qi], dqi, schema.BuiltinOptions.DequantizeOptions, schema.DequantizeOptionsT()),
            op(sub_code, [dqi, i], di, schema.BuiltinOptions.SubOptions, schema.SubOptionsT()),
            op(mul_code, [di, fi], fdi, schema.BuiltinOptions.MulOptions, schema.MulOptionsT()),
            op(add_code, [i, fdi], outi, schema.BuiltinOptions.AddOptions, schema.AddOptionsT()),
        ]
        renamed[i] = outi
    ops: list[Any] = []
    for i in [int(j) for j in graph.inputs]:
        ops.extend(blocks.get(i, []))
    for o in graph.operators:
        o.inputs = np.array([renamed.get(int(i), int(i)) for i in o.inputs], np.int32)
        ops.append(o)
        for out in o.outputs:
            ops.extend(blocks.get(int(out), []))
    graph.operators = ops
    graph.outputs = np.array([renamed.get(int(i), int(i)) for i in graph.outputs], np.int32)
    graph.inputs = np.array([*map(int, graph.inputs), *flags], np.int32)
    model.signatureDefs = []  # the signature lists the original inputs only
    return tl.write(model)


def fragile_tensors(
    data: bytes,
    targets: Mapping[str, Any],
    x: np.ndarray,
    base: Mapping[int, str],
    target: float = TARGET,
    trigger: float = 0.99,
) -> tuple[list[tuple[str, float]], float]:
    """([(tensor, cosine when quantized alone)] to keep float, cosine of the full fake-quantized pass) on
    NHWC float images `x`; the choice is sensitivity.select's, as for ONNX, with each candidate set
    measured as it will be built: `base` ops and what plan_float_ops adds to them float too."""
    from edgeface.converters import sensitivity
    from edgeface.converters.tflite import _interpreter

    points = sensitivity_points(data, targets)
    if not points:
        return [], 1.0
    interp = _interpreter(flagged_graph(data, targets, points))
    details = interp.get_input_details()
    by_name = {d["name"]: d["index"] for d in details}
    image = next(d["index"] for d in details if not d["name"].startswith(FLAG))
    flag = [by_name[f"{FLAG}{k}"] for k in range(len(points))]
    out = interp.get_output_details()[0]["index"]
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)

    def run(on: set[int]) -> np.ndarray:
        for k, f in enumerate(flag):
            interp.set_tensor(f, one if k in on else zero)
        rows = []
        for a in x:
            interp.set_tensor(image, a[None].astype(np.float32))
            interp.invoke()
            rows.append(interp.get_tensor(out).reshape(-1).copy())
        return np.stack(rows)

    def implied(kept: Sequence[int]) -> set[int]:
        ops = plan_float_ops(data, base, [points[k] for k in kept])
        return set(kept) | float_points(data, ops, points)

    return sensitivity.select(run, points, target, trigger, scan=implied)
