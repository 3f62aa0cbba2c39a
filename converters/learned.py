"""Keep the scales `edgeface quantize` learned (PTQ/QAT) instead of recalibrating at export.

The checkpoint restores as a fake-quant GraphModule (BN already folded). Its float twin (quantizers switched
off, the module deep-copied) is what gets exported; `quant_plan` supplies per-channel weight scales per
conv/linear and the scale/zero point of every activation quantizer. They are matched to the ONNX graph in
execution order (convs to QuantConv2d/QuantLinear calls, Adds to the add quantizers), checked by weight
shape, and turned into the ranges qdq.py consumes: a signed int8 (or int6) grid [qmin, qmax] with
scale s and zero point z covers [s (qmin - z), s (qmax - z)], which the uint8 grid reproduces exactly.
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
    """{"model": float twin, "onnx": {"weights": {conv node: scales}, "activations": {tensor: (lo, hi)}},
    "plan": quant_plan, "layers": every conv/linear in execution order, float ones included}."""
    from edgeface.converters.onnx_float import export_float_onnx

    from edgeface.compress.quant import quant_plan
    from edgeface.compress.quant.fakequant import ActQuant, QuantConv2d, QuantLinear

    plan = quant_plan(qmodel)
    twin = copy.deepcopy(qmodel).eval()
    for m in twin.modules():
        if isinstance(m, QuantConv2d | QuantLinear):
            m.quant_enabled = False
        elif isinstance(m, ActQuant):
            m.enabled = False
    proto = export_float_onnx(twin, spec.input_size)
    order, adds = weighted_layers(qmodel), add_nodes_of(qmodel)
    onnx_plan = match_onnx(proto, plan, order, adds)
    return {"model": twin, "onnx": onnx_plan, "plan": plan, "layers": order, "adds": adds}


def weighted_layers(qmodel: Any) -> list[str]:
    """Every conv/linear module in execution order, the ones `edgeface quantize` left float included."""
    from torch import nn

    return [
        str(n.target)
        for n in qmodel.graph.nodes
        if n.op == "call_module" and isinstance(qmodel.get_submodule(str(n.target)), nn.Conv2d | nn.Linear)
    ]


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


def _bits(q: dict[str, Any]) -> int:
    return int(np.ceil(np.log2(int(q["quant_max"]) - int(q["quant_min"]) + 1)))


def match_onnx(
    proto: Any, plan: dict[str, Any], order: list[str] | None = None, add_nodes: list[str] | None = None
) -> dict[str, Any]:
    """`order`: all weighted layers in execution order (weighted_layers); those not in the plan were left
    float by `edgeface quantize` (its measured fallback) and their convs stay float in the export."""
    from edgeface.converters import qdq
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    left_float, matched = split_layers(convs, plan, order, "ONNX graph", "convs")
    kept_float = [conv.name for conv in left_float]
    convs, layers = [c for c, _ in matched], [(name, plan["layers"][name]) for _, name in matched]
    weights: dict[str, np.ndarray] = {}
    weight_bits: dict[str, int] = {}
    acts: dict[str, tuple[float, float]] = {}
    act_bits: dict[str, int] = {}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for conv, (name, layer) in zip(convs, layers, strict=True):
        w = inits[conv.input[1]]
        if len(layer["weight_scale"]) != w.shape[0]:
            raise EdgefaceError(f"learned scales of {name} do not fit ONNX node {conv.name} ({w.shape})")
        weights[conv.name] = np.asarray(layer["weight_scale"], np.float32)
        weight_bits[conv.name] = int(layer["weight_bits"])
        if layer["output"] is not None:
            out = conv.output[0]
            users = consumers.get(out, [])
            if len(users) == 1 and users[0].op_type in (*qdq.ACTIVATIONS, "PRelu", "LeakyRelu"):
                out = users[0].output[0]
            acts[out], act_bits[out] = _range(layer["output"]), _bits(layer["output"])
    quantizers = plan["quantizers"]
    if plan.get("input_quantizer"):
        q = quantizers[plan["input_quantizer"]]
        acts[proto.graph.input[0].name], act_bits[proto.graph.input[0].name] = _range(q), _bits(q)
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    for node, q in add_pairs(adds, quantizers, add_nodes) or []:  # else the exporter calibrates the adds
        acts[node.output[0]] = _range(quantizers[q])
        act_bits[node.output[0]] = _bits(quantizers[q])
    return {
        "weights": weights,
        "weight_bits": weight_bits,
        "activations": acts,
        "activation_bits": act_bits,
        "keep_float": kept_float,
    }


def _add_index(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def add_nodes_of(qmodel: Any) -> list[str]:
    """The checkpoint's tensor additions in execution order (fx names them add, add_1, ...)."""
    import operator

    import torch

    return [
        n.name
        for n in qmodel.graph.nodes
        if (n.op == "call_function" and n.target in (operator.add, torch.add))
        or (n.op == "call_method" and n.target == "add")
    ]


def add_pairs(
    ops: list[Any], quantizers: Mapping[str, Any], add_nodes: Sequence[str] | None
) -> list[Any] | None:
    """[(graph add op, its quantizer)], or None when they cannot be told apart. With the checkpoint's
    additions (`add_nodes`) as many as the graph's, each quantizer goes to its addition's position: an
    addition left float (it feeds only float layers) has no quantizer and must not shift the others.
    Without them, only equal counts match, in order."""
    add_q = [q for q in quantizers if q.startswith("aq_add")]
    if add_nodes is not None and len(add_nodes) == len(ops):
        position = {"aq_" + name: k for k, name in enumerate(add_nodes)}
        if all(q in position for q in add_q):
            return [(ops[position[q]], q) for q in add_q]
    if len(ops) == len(add_q):
        return list(zip(ops, sorted(add_q, key=_add_index), strict=True))
    return None
