"""Keep the scales `edgeface quantize` learned (PTQ/QAT) instead of recalibrating at export.

The checkpoint restores as a fake-quant GraphModule (BN already folded, SmoothQuant migration and layer
scales already in its weights). Its float twin (quantizers switched off, the module deep-copied) is what
gets exported; `quant_plan` supplies per-channel weight scales per conv/linear and the scale/zero point of
every activation quantizer. Weighted layers are matched to the ONNX graph's weighted nodes (Conv, and
Gemm/MatMul with a constant weight: a Linear) in execution order, checked by output channels on the node's
own weight axis; a layer's input quantizer goes onto the tensor its node reads and every tensor that
tensor copies through same-grid ops (reshape, transpose, ...), wherever qdq.plan_graph puts the point; its
output quantizer onto the node's (activated) output; the add quantizers onto the Adds. A layer the
checkpoint quantized without an output quantizer (a Linear writing float) writes float in the export too,
and without an input quantizer the graph input stays float. Ranges are what qdq.py consumes: a signed
int8 (or int6) grid [qmin, qmax] with scale s and zero point z covers [s (qmin - z), s (qmax - z)], which
the uint8 grid reproduces exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError, ModelError
from edgeface.spec import ModelSpec


def _range(q: dict[str, Any]) -> tuple[float, float]:
    s, z = float(q["scale"]), int(q["zero_point"])
    return s * (int(q["quant_min"]) - z), s * (int(q["quant_max"]) - z)


def plan_from_quantized(qmodel: Any, spec: ModelSpec) -> dict[str, Any]:
    """{"model": float twin, "onnx": match_onnx's plan, "plan": quant_plan, "layers": every conv/linear
    in execution order, float ones included, "float_layers": {layer: why} of those left float}."""
    from edgeface.converters.onnx_float import export_float_onnx

    from edgeface.compress.quant import quant_plan
    from edgeface.compress.quant.fakequant import ActQuant, QuantConv2d, QuantLinear
    from edgeface.compress.quant.prepare import layer_class

    plan = quant_plan(qmodel)
    twin = copy.deepcopy(qmodel).eval()
    for m in twin.modules():
        if isinstance(m, QuantConv2d | QuantLinear):
            m.quant_enabled = False
        elif isinstance(m, ActQuant):
            m.enabled = False
    proto = export_float_onnx(twin, spec.input_size, channels=spec.channels)
    order, adds = weighted_layers(qmodel), add_nodes_of(qmodel)
    onnx_plan = match_onnx(proto, plan, order, adds)
    onnx_plan["layer_class"] = {n: layer_class(qmodel.get_submodule(n)) for n in order}  # for --layer-bits
    return {
        "model": twin,
        "onnx": onnx_plan,
        "plan": plan,
        "layers": order,
        "adds": adds,
        "float_layers": float_layers(qmodel, plan, order),
    }


def weighted_layers(qmodel: Any) -> list[str]:
    """Every conv/linear module in execution order that computes on the model input, the ones
    `edgeface quantize` left float included. A layer fed only by constants (EdgeNeXt's positional encoding,
    built from the input's shape) is not: every exporter folds it away."""
    from torch import nn

    from edgeface.compress.quant.graph import INFO_KEY, is_float_data

    return [
        str(n.target)
        for n in qmodel.graph.nodes
        if n.op == "call_module"
        and isinstance(qmodel.get_submodule(str(n.target)), nn.Conv2d | nn.Linear)
        and (not n.args or getattr(n.args[0], "meta", {}).get(INFO_KEY) is None or is_float_data(n.args[0]))
    ]


def opaque_module_of(label: str, plan: Mapping[str, Any]) -> str | None:
    """The opaque module (quant_plan's `opaque_modules`: kept float, called as one op) an exported op
    belongs to, read from its name. Both exporters name by the call's module attribute: torch.onnx scopes
    nodes ("/attn/MatMul", "/attn_1/Gemm" for the second module named attn), litert-torch names tensors by
    class and attribute ("...MultiheadAttention_attn;15"). A name can be ambiguous, so split_layers' count
    check then refuses the match rather than guess."""
    import re

    scopes = label.strip("/").split("/")[:-1]
    for m in plan.get("opaque_modules") or []:
        name, cls = str(m["name"]), str(m["class"])
        last = name.rsplit(".", 1)[-1]
        if f"{cls}_{last};" in label or any(re.fullmatch(re.escape(last) + r"(_\d+)?", s) for s in scopes):
            return name
    return None


OPAQUE_REASON = "forward calls it as one opaque op ({}), so edgeface quantize kept its weights float"


def float_layers(qmodel: Any, plan: Mapping[str, Any], order: Sequence[str]) -> dict[str, str]:
    """{layer: why} for the weighted layers the checkpoint left float, for the export report."""
    from edgeface.compress.quant.prepare import FLOAT_KEY

    record = plan.get("record") or {}
    fallback = record.get("fallback") or {}
    why_of = {str(n.target): n.meta.get(FLOAT_KEY) for n in qmodel.graph.nodes if n.op == "call_module"}
    out = {}
    for layer in order:
        if layer in plan["layers"]:
            continue
        if layer in fallback:
            cost = fallback[layer]
            out[layer] = f"edgeface quantize's fallback: its input quantizer cost {cost}x the mean loss"
        else:
            out[layer] = why_of.get(layer) or "left float by edgeface quantize"
    for m in plan.get("opaque_modules") or []:
        out[str(m["name"])] = OPAQUE_REASON.format(m["class"])
    return out


def split_layers(
    ops: Sequence[Any], plan: Mapping[str, Any], order: Sequence[str] | None, graph: str, kind: str
) -> tuple[list[Any], list[tuple[Any, str]]]:
    """(weighted ops of the layers the checkpoint left float, [(op, layer)] of its quantized ones): the
    graph's weighted ops matched in execution order to `order` (every conv/linear, weighted_layers;
    default the plan's layers). ONNX and TFLite both match this way."""
    order = list(order) if order is not None else list(plan["layers"])
    if len(ops) != len(order) or not set(plan["layers"]) <= set(order):
        raise ModelError(
            f"quantized checkpoint has {len(order)} weight layers but its {graph} {len(ops)} {kind}: "
            "cannot carry the learned scales over; export the float weights with --int8/--w6a6 instead "
            "(the exporter calibrates its own scales)"
        )
    pairs = list(zip(ops, order, strict=True))
    return [op for op, n in pairs if n not in plan["layers"]], [
        (op, n) for op, n in pairs if n in plan["layers"]
    ]


def with_calls(matched: Sequence[tuple[Any, str]], plan: Mapping[str, Any]) -> list[tuple[Any, str, dict]]:
    """[(op, layer, the layer's plan entry with the quantizers of this op's own call)]: a layer forward
    calls at k places (one conv applied to an image and its mirror image) matches k ops, in execution
    order, which share its weight scales but each read and write their own grids."""
    seen: dict[str, int] = {}
    out = []
    for op, name in matched:
        layer = plan["layers"][name]
        calls = layer.get("calls") or [layer]
        k = seen[name] = seen.get(name, -1) + 1
        if k >= len(calls):
            raise ModelError(
                f"layer {name} runs {k + 1} times in the exported graph but {len(calls)} in the quantized "
                "checkpoint: cannot carry its learned scales over; export the float weights with "
                "--int8/--w6a6 instead"
            )
        out.append((op, name, {**layer, **calls[k]}))
    return out


def _bits(q: dict[str, Any]) -> int:
    return int(np.ceil(np.log2(int(q["quant_max"]) - int(q["quant_min"]) + 1)))


WEIGHTED_NODES = ("Conv", "Gemm", "MatMul")


def weighted_nodes(proto: Any) -> list[Any]:
    """The nodes a conv or Linear layer exports to, in graph order: Conv, and Gemm/MatMul with a constant
    weight (a Linear on channels-last tokens; attention's activation x activation MatMul has none)."""
    inits = {t.name for t in proto.graph.initializer}
    return [
        n
        for n in proto.graph.node
        if n.op_type in WEIGHTED_NODES and len(n.input) > 1 and n.input[1] in inits
    ]


def copies_of(tensor: str, producers: Mapping[str, Any], inits: Mapping[str, Any]) -> list[str]:
    """`tensor` and the tensors it copies through same-grid ops (reshape, transpose, flatten, ...) back to
    the op that computed it: qdq.plan_graph puts a weighted node's input point on any one of them."""
    from edgeface.quant_ops import onnx_rule

    chain = [tensor]
    while (p := producers.get(chain[-1])) is not None and len(chain) < 10_000:
        rule = onnx_rule(p.op_type)
        acts = [i for i in p.input if i and i not in inits]
        if rule is None or rule.kind != "same_grid" or len(acts) != 1:
            break
        chain.append(acts[0])
    return chain


def layer_output(node: Any, consumers: Mapping[str, list[Any]], inits: Mapping[str, Any]) -> str:
    """The tensor the layer's output quantizer rounds: after the bias Add of a Linear that stayed a
    MatMul, and after a fused ReLU/Clip/PReLU."""
    from edgeface.converters.qdq import ACTIVATIONS

    out = node.output[0]
    users = consumers.get(out, [])
    bias = len(users) == 1 and users[0].op_type == "Add" and any(i in inits for i in users[0].input)
    if node.op_type == "MatMul" and bias:
        out = users[0].output[0]
        users = consumers.get(out, [])
    if len(users) == 1 and users[0].op_type in (*ACTIVATIONS, "PRelu", "LeakyRelu", "HardSwish"):
        out = users[0].output[0]
    return out


def match_onnx(
    proto: Any, plan: dict[str, Any], order: list[str] | None = None, add_nodes: list[str] | None = None
) -> dict[str, Any]:
    """`order`: all weighted layers in execution order (weighted_layers); those not in the plan were left
    float by `edgeface quantize` (its measured fallback, or no integer reader) and stay float in the
    export, as do the nodes inside a module it kept opaque (opaque_module_of). Returns the weight scales
    and bits per node, the activation ranges and bits per tensor, the nodes to keep float and the tensors
    to leave unquantized (`float_tensors`, see the module docstring)."""
    from edgeface.converters import qdq
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = weighted_nodes(proto)
    opaque = [n for n in nodes if opaque_module_of(n.name, plan)]
    nodes = [n for n in nodes if not opaque_module_of(n.name, plan)]
    left_float, matched = split_layers(nodes, plan, order, "ONNX graph", "conv/linear nodes")
    left_float += opaque
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weights: dict[str, np.ndarray] = {}
    weight_bits: dict[str, int] = {}
    acts: dict[str, tuple[float, float]] = {}
    act_bits: dict[str, int] = {}
    float_tensors: list[str] = []
    layer_of: dict[str, str] = {}

    def put(tensor: str, q: Mapping[str, Any]) -> None:
        if tensor not in acts:  # the same quantizer reached twice; a layer's output comes first
            acts[tensor], act_bits[tensor] = _range(q), _bits(q)

    matched_calls = with_calls(matched, plan)
    for node, name, layer in matched_calls:
        w = inits[node.input[1]]
        channels = w.shape[qdq.weight_axis(node)]
        if len(layer["weight_scale"]) != channels:
            raise EdgefaceError(
                f"learned scales of {name} ({len(layer['weight_scale'])} channels) do not fit ONNX node "
                f"{node.name} ({node.op_type}, weight {list(w.shape)})"
            )
        weights[node.name] = np.asarray(layer["weight_scale"], np.float32)
        weight_bits[node.name] = int(layer["weight_bits"])
        layer_of[node.name] = name
        out = node.output[0]
        if layer["output"] is None:
            float_tensors.append(out)  # the checkpoint's layer writes float (QGemm with a float output)
            continue
        put(layer_output(node, consumers, inits), layer["output"])
    for node, _, layer in matched_calls:
        if layer["input"] is not None:
            for t in copies_of(node.input[0], producers, inits):
                put(t, layer["input"])
    quantizers = plan["quantizers"]
    graph_input = proto.graph.input[0].name
    if plan.get("input_quantizer"):
        put(graph_input, quantizers[plan["input_quantizer"]])
    else:
        float_tensors.append(graph_input)  # the checkpoint's first layers read the float image
    adds = [n for n in proto.graph.node if n.op_type == "Add" and not set(n.input) & set(inits)]
    for node, q in add_pairs(adds, quantizers, add_nodes) or []:  # else the exporter calibrates the adds
        put(node.output[0], quantizers[q])
    return {
        "weights": weights,
        "weight_bits": weight_bits,
        "activations": acts,
        "activation_bits": act_bits,
        "keep_float": [node.name for node in left_float],
        "float_tensors": float_tensors,
        "layer_of": layer_of,
    }


def _add_index(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def add_nodes_of(qmodel: Any) -> list[str]:
    """The checkpoint's additions of two tensors computed from the input, in execution order (fx names
    them add, add_1, ...). Additions of a constant (GELU's erf + 1, a positional encoding, shape
    arithmetic) are left out, as exporters fold or fuse them and never quantize them."""
    import operator

    import torch

    from edgeface.compress.quant.graph import INFO_KEY, is_float_data

    def data(a: Any) -> bool:
        meta = getattr(a, "meta", None)
        return meta is not None and (meta.get(INFO_KEY) is None or is_float_data(a))

    return [
        n.name
        for n in qmodel.graph.nodes
        if (
            (n.op == "call_function" and n.target in (operator.add, torch.add))
            or (n.op == "call_method" and n.target == "add")
        )
        and len(n.args) >= 2
        and all(data(a) for a in n.args[:2])
    ]


def add_quantizers(quantizers: Mapping[str, Any], add_nodes: Sequence[str] | None) -> list[str]:
    """The quantizers on the checkpoint's own additions (`add_nodes`, add_nodes_of). A quantizer on the
    addition of a constant (a ViT's tokens + positional embedding) is a layer's input quantizer, which the
    layer carries; without `add_nodes`, every `aq_add*` counts."""
    if add_nodes is None:
        return [q for q in quantizers if q.startswith("aq_add")]
    own = {"aq_" + name for name in add_nodes}
    return [q for q in quantizers if q in own]


def add_pairs(
    ops: list[Any], quantizers: Mapping[str, Any], add_nodes: Sequence[str] | None
) -> list[Any] | None:
    """[(graph add op, its quantizer)], or None when they cannot be told apart. With the checkpoint's
    additions (`add_nodes`) as many as the graph's, each quantizer goes to its addition's position: an
    addition left float (it feeds only float layers) has no quantizer and must not shift the others.
    Without them, only equal counts match, in order."""
    add_q = add_quantizers(quantizers, add_nodes)
    if add_nodes is not None and len(add_nodes) == len(ops):
        position = {"aq_" + name: k for k, name in enumerate(add_nodes)}
        if all(q in position for q in add_q):
            return [(ops[position[q]], q) for q in add_q]
    if len(ops) == len(add_q):
        return list(zip(ops, sorted(add_q, key=_add_index), strict=True))
    return None
