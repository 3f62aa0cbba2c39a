"""TFLite flatbuffer surgery for what ai-edge-quantizer cannot be told: learned scales and the 6-bit grid.

ai-edge-quantizer takes activation ranges from us (its `qsvs`) but always derives weight scales from the
weights' own min/max at 8 bits. So the quantized flatbuffer is edited afterwards (schema object API):
every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED gets its weights re-quantized from the float model on
the scales we choose (learned per-channel scales of `edgeface quantize`, or max-abs on the 6-bit grid
[-31, 31]) and its int32 bias re-quantized on input scale x weight scale, which is the invariant the
integer kernels rely on. Weighted ops are matched to `quant_plan["layers"]` in execution order and checked
by output channels, as learned.py does for ONNX; the 1x1 depthwise slope convs that torch_rewrite adds for
PReLU carry no learned scales and are skipped.

w6a6 activations live in int8 storage with the 6-bit step as their scale and 64 codes. A requantizing op
(conv, add) writes its output with the grid at the top of the int8 range, codes [64, 127], so it saturates
at 127 by itself; the bottom is held by the op's fused ReLU/ReLU6 where the zero point is code 64, and
otherwise by an int8 -> int8 QUANTIZE that moves the grid to the bottom, [-128, -65], where it saturates at
-128. XNNPACK runs that requantization in the delegate (it delegates MAXIMUM only in float, and
ai-edge-quantizer does not quantize MINIMUM at all). The QUANTIZE starts as a MAXIMUM with the grid's lowest
value in the float graph, exact in float and a tensor the quantizer gives our grid; it is rewritten after
quantization.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError, ModelError

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# ops whose output keeps its input's grid and codes (PAD adds the zero point, which lies on the grid)
SAME_AS_INPUT = (
    "PAD",
    "PADV2",
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "MAX_POOL_2D",
    "TRANSPOSE",
    "SPLIT",
    "SPLIT_V",
    "SLICE",
    "STRIDED_SLICE",
    "GATHER",
    "UNPACK",
    "BROADCAST_TO",
    "AVERAGE_POOL_2D",
    "MIRROR_PAD",
    "SPACE_TO_DEPTH",
    "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR",
    "GATHER_ND",
    "REDUCE_MIN",
)
# ops whose every input ai-edge-quantizer puts on the output's grid (it inserts an int8 requantize in front
# of an input whose producer wrote another grid)
SAME_AS_OUTPUT = ("CONCATENATION", "PACK", "SELECT", "SELECT_V2", "DYNAMIC_UPDATE_SLICE")
# ops whose int8 kernels need every quantized input on the output's grid: XNNPACK refuses a concatenation
# of two scales or zero points ("Mismatching quantization zero point across the 1th input ... for
# CONCATENATE operator"), TFLite's int8 MAXIMUM/MINIMUM compare codes
ONE_GRID = (*SAME_AS_OUTPUT, "MAXIMUM", "MINIMUM")
# int8 kernels whose output grid is fixed by the kernel, not by calibration: (scale, zero point)
FIXED_OUTPUT_GRID = {"SOFTMAX": (1.0 / 256, -128), "LOGISTIC": (1.0 / 256, -128), "TANH": (1.0 / 128, 0)}
TOP = 127  # 6-bit codes are written at [TOP - 63, TOP] of the int8 range
CLAMP_SUFFIX = "/grid6"  # the tensors an inserted clamp writes
ONTO_SUFFIX = "/onto"  # the tensors requantize_inputs writes: `<input>/onto<its reader's output>`
FUSED_LOWER = {1: 0.0, 2: -1.0, 3: 0.0}  # RELU, RELU_N1_TO_1, RELU6: the real value they clamp below at


@dataclass(frozen=True)
class Target:
    """The int8 quantization one activation tensor must end up with; `bits` < 8 means held to the 2**bits
    codes from `qlo`."""

    scale: float
    zero_point: int
    bits: int = 8
    qlo: int = -128

    def int8_range(self) -> tuple[float, float]:
        """The [min, max] that makes ai-edge-quantizer's asymmetric int8 formula return exactly this grid."""
        return self.scale * (-128 - self.zero_point), self.scale * (127 - self.zero_point)


def from_affine(scale: float, zero_point: int, qmin: int, bits: int, hold: bool) -> Target:
    """A signed `bits` grid (codes from qmin, zero point zero_point) in int8 storage. Held (w6a6): the same
    step with the grid moved to the top codes. Not held: the same scale and zero point, all 256 codes."""
    if bits >= 8 or not hold:
        return Target(float(scale), int(zero_point), 8)
    qlo = TOP - 2**bits + 1
    return Target(float(scale), int(zero_point) + qlo - qmin, bits, qlo)


# ---------------------------------------------------------------------------------------------- flatbuffer
def read(data: bytes) -> Any:
    """The object tree of a flatbuffer, with constants stored after it (Buffer.offset/size, which
    ai-edge-quantizer writes for large models) pulled back inline so that `write` keeps them."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for buf in model.buffers:
        if buf.data is None and (buf.offset or 0) > 1 and (buf.size or 0) > 0:
            buf.data = np.frombuffer(data, np.uint8, count=buf.size, offset=buf.offset).copy()
            buf.offset, buf.size = 0, 0
    return model


def write(model: Any) -> bytes:
    from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray

    return bytes(convert_object_to_bytearray(model))


_NAMES: dict[int, str] = {}


def op_name(model: Any, op: Any) -> str:
    from ai_edge_litert import schema_py_generated as schema

    if not _NAMES:
        _NAMES.update({v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")})
    code = model.operatorCodes[op.opcodeIndex]
    return _NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def tensor_name(t: Any) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def buffer_array(model: Any, tensor: Any, dtype: Any) -> np.ndarray:
    raw = model.buffers[tensor.buffer].data
    if raw is None:
        raise EdgefaceError(f"TFLite tensor {tensor_name(tensor)} has no constant data")
    return np.frombuffer(np.asarray(raw, np.uint8).tobytes(), dtype).reshape(tuple(tensor.shape))


def is_const(model: Any, graph: Any, i: int) -> bool:
    """Tensor `i` holds constant data (weights, a folded value), not an activation."""
    data = model.buffers[graph.tensors[i].buffer].data
    return data is not None and len(data) > 0


def consumers(graph: Any) -> dict[int, list[int]]:
    """Tensor index -> the indices of the ops that read it."""
    users: dict[int, list[int]] = {}
    for k, op in enumerate(graph.operators):
        for i in op.inputs:
            if i >= 0:
                users.setdefault(int(i), []).append(k)
    return users


def writers(graph: Any) -> dict[int, int]:
    """Tensor index -> the index of the op that writes it (consumers' twin)."""
    return {int(o): k for k, op in enumerate(graph.operators) for o in op.outputs}


def _dw1x1(model: Any, op: Any, graph: Any) -> bool:
    if op_name(model, op) != "DEPTHWISE_CONV_2D":
        return False
    return tuple(graph.tensors[op.inputs[1]].shape[1:3]) == (1, 1)


CASTS = ("QUANTIZE", "DEQUANTIZE")  # ops ai-edge-quantizer inserts where int8 and float ops meet


def _is_copy(model: Any, op: Any) -> bool:
    """A QUANTIZE/DEQUANTIZE, or a w6a6 grid clamp (a MAXIMUM with the grid's lowest value, exact on the
    grid): ops that pass a tensor on unchanged for what PReLU matching cares about."""
    if op_name(model, op) in CASTS:
        return True
    return bool(op.outputs is not None and len(op.outputs)) and tensor_name(
        model.subgraphs[0].tensors[op.outputs[0]]
    ).endswith(CLAMP_SUFFIX)


def _source(model: Any, writer: Mapping[int, int], i: int) -> int:
    """Tensor `i`, or the activation it is a copy of through QUANTIZE/DEQUANTIZE ops and grid clamps."""
    graph = model.subgraphs[0]
    while (k := writer.get(i)) is not None and _is_copy(model, p := graph.operators[k]):
        ins = [int(j) for j in p.inputs if j >= 0 and not is_const(model, graph, int(j))]
        if len(ins) != 1:
            break
        i = ins[0]
    return i


def _readers(model: Any, graph: Any, i: int, users: Mapping[int, list[int]]) -> list[int]:
    """The ops reading tensor `i`, looking through its copies (QUANTIZE/DEQUANTIZE, grid clamps)."""
    out: list[int] = []
    for k in users.get(i, []):
        op = graph.operators[k]
        if _is_copy(model, op):
            out.extend(_readers(model, graph, int(op.outputs[0]), users))
        else:
            out.append(k)
    return out


def is_prelu_slope(model: Any, graph: Any, k: int, users: Mapping[int, list[int]]) -> bool:
    """A bias-free 1x1 depthwise conv of torch_rewrite.prelu_as_max. Max form: its output only feeds
    (through a w6a6 clamp, if any) a MAXIMUM that also reads the conv's own input. Any-slope form
    a*x + (1-a)*relu(x): it feeds an ADD whose other input is the other 1x1 depthwise conv of the pair,
    one of the two reading RELU(the other's input).

    The same in a quantized or w6a6 graph: the QUANTIZE/DEQUANTIZE ops the quantizer puts between an int8
    op and a float one (a tensor the sensitivity pass keeps float) and the w6a6 grid clamps are looked
    through, since they change no value that matters here.
    """
    op = graph.operators[k]
    if not _dw1x1(model, op, graph):
        return False
    writer = writers(graph)

    def src(i: int) -> int:
        return _source(model, writer, int(i))

    def producer(i: int) -> Any:
        return graph.operators[writer[i]] if i in writer else None

    nxt = _readers(model, graph, int(op.outputs[0]), users)
    if len(nxt) != 1:
        return False
    m = graph.operators[nxt[0]]
    if op_name(model, m) == "MAXIMUM":
        return src(op.inputs[0]) in [src(i) for i in m.inputs]
    if op_name(model, m) != "ADD":
        return False
    mine = int(op.outputs[0])
    others = [producer(src(i)) for i in m.inputs if src(i) != mine]
    if len(others) != 1 or others[0] is None or not _dw1x1(model, others[0], graph):
        return False
    a, b = src(op.inputs[0]), src(others[0].inputs[0])
    for relu_out, x in ((a, b), (b, a)):
        r = producer(relu_out)
        if r is not None and op_name(model, r) == "RELU" and src(r.inputs[0]) == x:
            return True
    return False


def copies_of(model: Any, tensor: int) -> list[str]:
    """The tensor and those it copies through SAME_AS_INPUT ops (reshape, transpose, ...) back to the op
    that computed it, whose output grid they all keep (tflite.activation_targets)."""
    graph = model.subgraphs[0]
    writer = writers(graph)
    chain = [tensor]
    while (k := writer.get(chain[-1])) is not None:
        op = graph.operators[k]
        if op_name(model, op) not in SAME_AS_INPUT:
            break
        chain.append(int(op.inputs[0]))
    return [tensor_name(graph.tensors[i]) for i in chain]


def model_adds(model: Any) -> list[Any]:
    """The ADD ops that are additions of the model itself, in execution order: not the ADD of a PReLU that
    torch_rewrite spelled as a x + (1 - a) relu(x) (an input written by one of its slope convs), not an
    ADD of a constant (a bias, GELU's erf + 1): what learned.add_nodes_of lists on the checkpoint's side."""
    graph = model.subgraphs[0]
    writer = writers(graph)
    slopes = set(weighted_ops(model)[1])
    return [
        op
        for op in graph.operators
        if op_name(model, op) == "ADD"
        and not any(writer.get(_source(model, writer, int(i))) in slopes for i in op.inputs if i >= 0)
        and not any(is_const(model, graph, int(i)) for i in op.inputs if i >= 0)
    ]


def weighted_ops(model: Any) -> tuple[list[int], list[int]]:
    """(learnable weighted ops, PReLU slope convs), op indices in execution order."""
    graph = model.subgraphs[0]
    users = consumers(graph)
    main, slopes = [], []
    for k, op in enumerate(graph.operators):
        if op_name(model, op) in WEIGHTED_OPS:
            (slopes if is_prelu_slope(model, graph, k, users) else main).append(k)
    return main, slopes


def out_channels(model: Any, k: int) -> int:
    graph = model.subgraphs[0]
    op = graph.operators[k]
    w = graph.tensors[op.inputs[1]]
    return int(w.shape[3] if op_name(model, op) == "DEPTHWISE_CONV_2D" else w.shape[0])


def activation_output(model: Any, k: int) -> str:
    """The tensor holding a weighted op's activated output: its own (ReLU/ReLU6 are fused) or, for a
    rewritten PReLU, the MAXIMUM or ADD after its slope conv."""
    graph = model.subgraphs[0]
    users = consumers(graph)
    out = int(graph.operators[k].outputs[0])
    nxt = users.get(out, [])
    if len(nxt) == 2:
        slope = [j for j in nxt if is_prelu_slope(model, graph, j, users)]
        if slope:
            m = users[int(graph.operators[slope[0]].outputs[0])][0]
            return tensor_name(graph.tensors[graph.operators[m].outputs[0]])
    return tensor_name(graph.tensors[out])


# ---------------------------------------------------------------------------------------- learned plan
@dataclass
class LearnedTflite:
    """What a quant_plan says about one float TFLite graph."""

    activations: dict[str, tuple[float, int, int, int]]  # tensor -> (scale, zero point, qmin, bits)
    weights: list[tuple[np.ndarray | None, int]]  # per learnable weighted op: (scales, bits)
    float_ops: dict[int, str] = field(
        default_factory=dict
    )  # op index -> why: layers the checkpoint left float


def match_plan(
    float_data: bytes,
    plan: Mapping[str, Any],
    order: Sequence[str] | None = None,
    add_nodes: Sequence[str] | None = None,
) -> LearnedTflite:
    """Map a quant_plan onto the float TFLite graph: weighted ops in order (checked by output channels), each
    layer's output quantizer onto the op's activated output, its input quantizer onto the tensor it reads
    and the ones that tensor copies (copies_of), the model's input quantizer onto the graph input, and the
    add quantizers onto the model's own ADD ops (model_adds; learned.add_pairs: by their addition's
    position in `add_nodes`).
    `order`: every conv/linear of the checkpoint in execution order (learned.weighted_layers); the ones the
    plan does not hold were left float by `edgeface quantize` and their ops stay float, as do the ops of a
    module it kept opaque (learned.opaque_module_of)."""
    from edgeface.converters.learned import (
        add_pairs,
        add_quantizers,
        opaque_module_of,
        split_layers,
        with_calls,
    )
    from edgeface.converters.qdq import CHECKPOINT_FLOAT_REASON

    model = read(float_data)
    graph = model.subgraphs[0]
    main, _ = weighted_ops(model)
    opaque = [
        k
        for k in main
        if any(opaque_module_of(tensor_name(graph.tensors[i]), plan) for i in graph.operators[k].outputs)
    ]
    main = [k for k in main if k not in opaque]
    left_float, matched = split_layers(
        main, plan, order, "TFLite graph", "CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED ops"
    )
    float_ops = {k: CHECKPOINT_FLOAT_REASON for k in (*left_float, *opaque)}
    main, layers = [k for k, _ in matched], [(name, layer) for _, name, layer in with_calls(matched, plan)]
    quantizers = plan["quantizers"]

    def act(q: Mapping[str, Any]) -> tuple[float, int, int, int]:
        return float(q["scale"]), int(q["zero_point"]), int(q["quant_min"]), int(q["bits"])

    acts: dict[str, tuple[float, int, int, int]] = {}
    weights: dict[int, tuple[np.ndarray | None, int]] = {k: (None, 8) for k in float_ops}  # left float
    for k, (name, layer) in zip(main, layers, strict=True):
        n = out_channels(model, k)
        if len(layer["weight_scale"]) != n:
            op = graph.operators[k]
            raise ModelError(
                f"learned scales of {name} ({len(layer['weight_scale'])} channels) do not fit TFLite op "
                f"{op_name(model, op)} #{k} ({n} output channels)"
            )
        weights[k] = (np.asarray(layer["weight_scale"], np.float32), int(layer["weight_bits"]))
        if layer["output"] is not None:
            acts[activation_output(model, k)] = act(layer["output"])
    for k, (_, layer) in zip(main, layers, strict=True):
        if layer["input"] is not None:  # a Linear's input: a LayerNorm's or GELU's output, say
            for t in copies_of(model, int(graph.operators[k].inputs[0])):
                acts.setdefault(t, act(layer["input"]))
    if plan.get("input_quantizer"):
        acts[tensor_name(graph.tensors[graph.inputs[0]])] = act(quantizers[plan["input_quantizer"]])
    adds = model_adds(model)
    add_q = add_quantizers(quantizers, add_nodes)
    pairs = add_pairs(adds, quantizers, add_nodes)
    if add_q and pairs is None:
        raise ModelError(
            f"quantized checkpoint has {len(add_q)} add quantizers but its TFLite graph {len(adds)} ADD ops: "
            "cannot carry the learned scales over; export the float weights with --int8/--w6a6 instead"
        )
    for op, q in pairs or []:
        acts[tensor_name(graph.tensors[op.outputs[0]])] = act(quantizers[q])
    return LearnedTflite(acts, [weights[k] for k in sorted(weights)], float_ops)


# ------------------------------------------------------------------------------------------- the grid
def insert_clamps(float_data: bytes, targets: Mapping[str, Target]) -> tuple[bytes, dict[str, Target]]:
    """Float graph with a MAXIMUM(x, lowest 6-bit value) after every held tensor whose producer neither
    passes codes through nor clamps there with a fused activation; returns the graph and the targets of the
    new tensors (the same grid as the tensor they clamp)."""
    from ai_edge_litert import schema_py_generated as schema

    model = read(float_data)
    graph = model.subgraphs[0]
    outputs = {int(i) for i in graph.outputs}
    code = next(
        (j for j, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == 55),
        None,
    )
    if code is None:
        c = schema.OperatorCodeT()
        c.builtinCode = c.deprecatedBuiltinCode = schema.BuiltinOperator.MAXIMUM
        c.version = 1
        model.operatorCodes.append(c)
        code = len(model.operatorCodes) - 1
    new_targets: dict[str, Target] = {}
    ops: list[Any] = []
    renamed: dict[int, int] = {}
    for op in graph.operators:
        op.inputs = np.array([renamed.get(int(i), int(i)) for i in op.inputs], np.int32)
        ops.append(op)
        name = op_name(model, op)
        out = int(op.outputs[0])
        t = graph.tensors[out]
        tgt = targets.get(tensor_name(t))
        if tgt is None or tgt.bits >= 8 or name in (*SAME_AS_INPUT, "MAXIMUM") or out in outputs:
            continue
        opts = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if opts in FUSED_LOWER and tgt.zero_point + round(FUSED_LOWER[opts] / tgt.scale) >= tgt.qlo:
            continue
        lowest = np.float32(tgt.scale * (tgt.qlo - tgt.zero_point))
        buf = schema.BufferT()
        buf.data = np.frombuffer(np.array([lowest], np.float32).tobytes(), np.uint8)
        model.buffers.append(buf)
        const = schema.TensorT()
        const.shape = np.ones(len(t.shape), np.int32)  # broadcast, of the rank the quantizer expects
        const.type, const.buffer = t.type, len(model.buffers) - 1
        const.name = (tensor_name(t) + "/grid6_lowest").encode()
        graph.tensors.append(const)
        held = schema.TensorT()
        held.shape, held.type, held.buffer = np.array(t.shape, np.int32), t.type, 0
        held.shapeSignature = t.shapeSignature
        held.name = (tensor_name(t) + CLAMP_SUFFIX).encode()
        graph.tensors.append(held)
        clamp = schema.OperatorT()
        clamp.opcodeIndex = code
        clamp.inputs = np.array([out, len(graph.tensors) - 2], np.int32)
        clamp.outputs = np.array([len(graph.tensors) - 1], np.int32)
        clamp.builtinOptionsType = schema.BuiltinOptions.MaximumMinimumOptions
        clamp.builtinOptions = schema.MaximumMinimumOptionsT()
        ops.append(clamp)
        renamed[out] = len(graph.tensors) - 1
        new_targets[tensor_name(held)] = tgt
    graph.operators = ops
    return write(model), new_targets


def past_clamps(clamped_data: bytes, ops: Mapping[int, str]) -> dict[int, str]:
    """`ops` (indices in the graph before insert_clamps) as indices in the graph with the clamps: every
    clamp is inserted after its producer, so the original ops keep their order among the others."""
    graph = read(clamped_data).subgraphs[0]
    originals = [
        k
        for k, op in enumerate(graph.operators)
        if not tensor_name(graph.tensors[int(op.outputs[0])]).endswith(CLAMP_SUFFIX)
    ]
    return {originals[k]: why for k, why in ops.items()}


@dataclass
class _Moves:
    """The zero points clamps_to_requantize moved: tensor index -> codes moved by, and the targets moved."""

    graph: Any
    targets: Mapping[str, Target]
    shifted: dict[int, int] = field(default_factory=dict)
    moved: dict[str, Target] = field(default_factory=dict)

    def move(self, i: int, shift: int) -> None:
        t = self.graph.tensors[i]
        t.quantization.zeroPoint = np.asarray(t.quantization.zeroPoint) + shift
        self.shifted[i] = shift
        name = tensor_name(t)
        if name in self.targets:
            old = self.targets[name]
            self.moved[name] = Target(old.scale, old.zero_point + shift, old.bits, old.qlo + shift)


def _on_grid(t: Any) -> bool:
    """An int8 tensor with a zero point (not float, not the int32 axis or the bool of a SELECT)."""
    q = t.quantization
    return t.type == 9 and q is not None and q.zeroPoint is not None and len(q.zeroPoint) > 0


def _grid(t: Any) -> tuple[tuple[float, ...], tuple[int, ...]]:
    q = t.quantization
    return tuple(np.asarray(q.scale, np.float32).tolist()), tuple(np.asarray(q.zeroPoint).tolist())


def code_input(model: Any, op: Any) -> int:
    """The input whose codes a SAME_AS_INPUT op copies: the first, but SPLIT's second (its first is the
    axis)."""
    return int(op.inputs[1] if op_name(model, op) == "SPLIT" else op.inputs[0])


def requantize_inputs(model: Any, op: Any, code: int, moves: _Moves) -> list[Any]:
    """int8 -> int8 QUANTIZE ops (opcode `code`) that put each quantized input of a ONE_GRID op that is not
    on its output's grid onto it, rewiring the op to read them; in execution order, to run before it. The
    tensors they write are added to `moves.moved` with the output's target, so check_targets sees them."""
    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    out = graph.tensors[int(op.outputs[0])]
    target = moves.moved.get(tensor_name(out), moves.targets.get(tensor_name(out)))
    new_ops: list[Any] = []
    inputs = [int(i) for i in op.inputs]
    for j, i in enumerate(inputs):
        src = graph.tensors[i] if i >= 0 else None
        if src is None or not _on_grid(src) or _grid(src) == _grid(out):
            continue
        t = schema.TensorT()
        t.shape, t.shapeSignature, t.type, t.buffer = src.shape, src.shapeSignature, src.type, 0
        t.name = (tensor_name(src) + ONTO_SUFFIX + tensor_name(out)).encode()
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale = np.array(out.quantization.scale, np.float32)
        t.quantization.zeroPoint = np.array(out.quantization.zeroPoint, np.int64)
        graph.tensors.append(t)
        q = schema.OperatorT()
        q.opcodeIndex, q.inputs = code, np.array([i], np.int32)
        q.outputs = np.array([len(graph.tensors) - 1], np.int32)
        q.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
        q.builtinOptions = schema.QuantizeOptionsT()
        new_ops.append(q)
        inputs[j] = len(graph.tensors) - 1
        if target is not None:
            moves.moved[tensor_name(t)] = target
    op.inputs = np.array(inputs, np.int32)
    return new_ops


def clamps_to_requantize(quant_data: bytes, targets: Mapping[str, Target]) -> tuple[bytes, dict[str, Target]]:
    """Rewrite every inserted MAXIMUM clamp of the quantized graph as an int8 -> int8 QUANTIZE onto the
    bottom codes of its grid, and keep the grids that kernels share on one grid after the move.

    Ops that copy codes without requantizing (pad, reshape, max-pool: SAME_AS_INPUT) move their outputs with
    their input. Ops that need their inputs and output on one grid (ONE_GRID: a concatenation, a
    PReLU-as-max) move their output when every input moved alike; an input that moved otherwise is put back
    on the output's grid by one more QUANTIZE (requantize_inputs): a concat input that only the concat reads
    is clamped on the concat's grid (tflite.activation_targets) beside others that ai-edge-quantizer
    requantized onto it, and XNNPACK refuses to delegate a concatenation of two grids.

    Returns the graph and the targets that changed or were added."""
    from ai_edge_litert import schema_py_generated as schema

    model = read(quant_data)
    graph = model.subgraphs[0]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
    code.version = 2  # int8 -> int8 requantization
    model.operatorCodes.append(code)
    requantize = len(model.operatorCodes) - 1
    moves = _Moves(graph, targets)
    ops: list[Any] = []
    for op in graph.operators:
        kind = op_name(model, op)
        out = int(op.outputs[0])
        name = tensor_name(graph.tensors[out])
        if not _on_grid(graph.tensors[out]):
            pass  # a float op (its reader is kept float): a float clamp holds it already, exactly
        elif kind == "MAXIMUM" and name.endswith(CLAMP_SUFFIX) and name in targets:
            op.opcodeIndex = requantize
            op.inputs = np.array(op.inputs[:1], np.int32)
            op.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
            op.builtinOptions = schema.QuantizeOptionsT()
            moves.move(out, -128 - targets[name].qlo)
        elif kind in SAME_AS_INPUT:
            shift = moves.shifted.get(code_input(model, op), 0)
            if shift:  # SPLIT, UNPACK: every output
                for o in op.outputs:
                    moves.move(int(o), shift)
        elif kind in ONE_GRID:
            ins = [int(i) for i in op.inputs if i >= 0 and _on_grid(graph.tensors[i])]
            shifts = {moves.shifted.get(i, 0) for i in ins}
            if len(shifts) == 1 and 0 not in shifts:  # a constant never moves, nor the output then
                moves.move(out, shifts.pop())
            ops.extend(requantize_inputs(model, op, requantize, moves))
        ops.append(op)
    graph.operators = ops
    return write(model), moves.moved


# --------------------------------------------------------------------------------------------- weights
def impose_weights(
    quant_data: bytes, float_data: bytes, scales: Sequence[tuple[np.ndarray | None, int]]
) -> tuple[bytes, int]:
    """Re-quantize the weights of every learnable weighted op (in order) on the given per-channel scales
    (None: max-abs on the given bit grid) and its bias on input scale x weight scale.

    Returns (flatbuffer, bytes of weights on a grid narrower than 8 bits: what 6-bit packing shrinks)."""
    q, f = read(quant_data), read(float_data)
    qg, fg = q.subgraphs[0], f.subgraphs[0]
    q_main, _ = weighted_ops(q)
    f_main, _ = weighted_ops(f)
    if len(q_main) != len(f_main) or len(q_main) != len(scales):
        raise ModelError(
            f"quantized TFLite graph has {len(q_main)} weighted ops, the float one {len(f_main)}, the plan "
            f"{len(scales)}: cannot place the weight scales (export the float weights with --int8 instead, "
            "or --format onnx)"
        )
    buffer_users: dict[int, int] = {}
    for t in qg.tensors:
        buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    narrow_bytes = 0
    for qk, fk, (s, bits) in zip(q_main, f_main, scales, strict=True):
        qop, fop = qg.operators[qk], fg.operators[fk]
        kind = op_name(q, qop)
        axis = 3 if kind == "DEPTHWISE_CONV_2D" else 0
        w = buffer_array(f, fg.tensors[fop.inputs[1]], np.float32)
        wt = qg.tensors[qop.inputs[1]]
        if wt.type == 0:  # an op the recipe left float (tflite_mixed.py) keeps its float weights
            continue
        if tuple(wt.shape) != w.shape or op_name(f, fop) != kind:
            raise ModelError(
                f"TFLite op #{qk} ({kind}) does not match its float op #{fk}: cannot place the weight scales "
                "(export the float weights with --int8 instead, or --format onnx)"
            )
        qmax = 2 ** (bits - 1) - 1
        wm = np.moveaxis(w, axis, 0)
        if s is None:
            top = np.abs(wm.reshape(wm.shape[0], -1)).max(axis=1)
            s = np.where(top > 0, top / qmax, 1.0 / qmax)  # a dead channel: any step, its bias must fit
        s = np.asarray(s, np.float32)
        if s.shape != (wm.shape[0],):
            raise ModelError(
                f"{s.size} weight scales for TFLite op #{qk} with {wm.shape[0]} channels (export the float "
                "weights with --int8 instead, or --format onnx)"
            )
        fb = buffer_array(f, fg.tensors[fop.inputs[2]], np.float32) if _has_bias(qop) else None
        s_in = float(qg.tensors[qop.inputs[0]].quantization.scale[0]) if fb is not None else 0.0
        if fb is not None:
            s = _bias_fits(s, fb, s_in)
        qw = np.clip(np.round(wm / s.reshape((-1,) + (1,) * (wm.ndim - 1))), -qmax, qmax).astype(np.int8)
        _set_buffer(q, wt, np.moveaxis(qw, 0, axis), buffer_users)
        wt.quantization.scale = s.astype(np.float32)
        wt.quantization.zeroPoint = np.zeros(s.shape, np.int64)
        wt.quantization.quantizedDimension = axis
        if bits < 8:
            narrow_bytes += int(qw.size)
        if fb is not None:
            bt = qg.tensors[qop.inputs[2]]
            bscale = (s_in * s).astype(np.float32)
            # in float64: float32 rounds the bound 2**31 - 1 up to 2**31, which wraps to -2**31 in int32
            qb = np.round(fb.astype(np.float64) / bscale.astype(np.float64))
            qb = np.clip(qb, -(2**31) + 1, 2**31 - 1).astype(np.int32)
            _set_buffer(q, bt, qb, buffer_users)
            bt.quantization.scale = bscale
            bt.quantization.zeroPoint = np.zeros(s.shape, np.int64)
            bt.quantization.quantizedDimension = len(bt.shape) - 1  # [C], or [1, 1, 1, C] from litert-torch
    return write(q), narrow_bytes


def _has_bias(op: Any) -> bool:
    return len(op.inputs) > 2 and op.inputs[2] >= 0


def _bias_fits(s: np.ndarray, bias: np.ndarray, s_in: float) -> np.ndarray:
    """Weight scales raised where the int32 bias on input scale x weight scale would leave int32: a
    channel whose weights are all zero (EdgeFace-XS's last attention block is a dead branch) has a tiny
    learned scale. Its weights stay 0 on any scale, so it still outputs its bias (qdq.build_qdq does the
    same for ONNX)."""
    if s_in <= 0:
        return s
    fit = np.abs(bias.reshape(-1).astype(np.float64)) / (s_in * (2**31 - 2))
    return np.maximum(s.astype(np.float64), fit).astype(np.float32)


def _set_buffer(model: Any, tensor: Any, value: np.ndarray, users: dict[int, int]) -> None:
    from ai_edge_litert import schema_py_generated as schema

    data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)
    if users.get(tensor.buffer, 0) > 1:  # shared constant: give this tensor its own copy
        users[tensor.buffer] -= 1
        model.buffers.append(schema.BufferT())
        tensor.buffer = len(model.buffers) - 1
        users[tensor.buffer] = 1
    buf = model.buffers[tensor.buffer]
    buf.data, buf.offset, buf.size = data, 0, 0


def check_targets(quant_data: bytes, targets: Mapping[str, Target]) -> list[str]:
    """Tensors whose scale or zero point in the quantized graph is not the one asked for."""
    model = read(quant_data)
    graph = model.subgraphs[0]
    by_name = {tensor_name(t): t for t in graph.tensors}
    bad = []
    for name, tgt in targets.items():
        t = by_name.get(name)
        if t is not None and t.type == 0:
            continue  # left float by the quantizer (reported as a float op)
        qp = None if t is None else t.quantization
        if qp is None or qp.scale is None or len(qp.scale) != 1:
            bad.append(name)
            continue
        if not np.isclose(float(qp.scale[0]), tgt.scale, rtol=1e-5) or int(qp.zeroPoint[0]) != tgt.zero_point:
            bad.append(name)
    return bad
