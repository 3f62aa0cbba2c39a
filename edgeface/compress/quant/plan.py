"""The quantized model as data: what an exporter needs to emit an integer graph, and what it weighs.

`quant_plan` lists, per weight layer (keyed by its qualified module name, which is also the ONNX
initializer prefix under torch.onnx.export(dynamo=False)), the weight bits and per-channel scales, the
channel axis of its activations (a Linear on an NHWC tensor: the last), and the scale / zero point / bits
of the activation quantizers on its input and output (a layer called at several places in forward, its
weights shared, has those of each call in `calls`, in execution order; its own are its first call's); plus
every activation quantizer by name with the graph node it rounds, the op that produced that tensor and the
ops that read it; every op that runs in float, with the reason from the per-operator table; and the modules
forward calls as one opaque op, whose weights stayed float (`opaque_modules`: exporters keep them float).
The input quantizer of a layer is found by walking back through ops that keep values on their grid (table
kind same_grid: flatten, reshape, permute, dropout, max-pool, ...), so a consumer never has to re-derive
the graph.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from edgeface.compress.quant.fakequant import ActQuant, QuantConv2d, QuantLinear, act_range, weight_range
from edgeface.compress.quant.fold import get_module, is_passthrough
from edgeface.compress.quant.prepare import FLOAT_KEY, opaque_weight_modules, weight_count


def _act(q: ActQuant) -> dict[str, Any]:
    qmin, qmax = act_range(q.bits)
    return {
        "scale": float(q.scale),
        "zero_point": int(q.zero_point),
        "bits": q.bits,
        "quant_min": qmin,
        "quant_max": qmax,
    }


def _producer_quantizer(gm: fx.GraphModule, node: Any) -> str | None:
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(get_module(gm, str(node.target)), ActQuant):
            return str(node.target)
        if not is_passthrough(gm, node) or not node.args:
            return None
        node = node.args[0]
    return None


def _consumer_quantizer(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The ActQuant reached from a layer's output through at most one fused activation (ReLU, PReLU, ...).
    Not through a float one: a Linear -> GELU -> quantizer writes float, and that quantizer rounds the
    GELU's output for the next layer (its input quantizer), not this layer's output."""
    from edgeface.compress.quant.graph import op_name
    from edgeface.quant_ops import torch_fused

    for hop in range(2):
        if len(node.users) != 1:
            return None
        node = next(iter(node.users))
        if node.op == "call_module" and isinstance(get_module(gm, str(node.target)), ActQuant):
            return str(node.target)
        if hop == 0 and not torch_fused(op_name(gm, node)):
            return None
    return None


def _activation_after(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The fused activation (ReLU, ReLU6, PReLU, ...) right after a layer, lower case; None if none."""
    from edgeface.compress.quant.graph import op_name
    from edgeface.quant_ops import torch_fused

    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op == "call_module" and isinstance(get_module(gm, str(user.target)), ActQuant):
        return None
    name = op_name(gm, user)
    return name.lower() if torch_fused(name) else None


def reader_nodes(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The nodes that read `node`'s output (a quantizer's, say), looking through same-grid ops."""
    out: list[fx.Node] = []
    stack = list(node.users)
    seen: set[str] = set()
    while stack:
        u = stack.pop()
        if u.name in seen:
            continue
        seen.add(u.name)
        if u.op != "output" and is_passthrough(gm, u):
            stack.extend(u.users)
        else:
            out.append(u)
    return out


def _readers(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    """Table keys of the ops that read a quantizer's output (looking through same-grid ops)."""
    from edgeface.compress.quant.graph import op_name

    out: list[str] = []
    for u in reader_nodes(gm, node):
        if u.op == "output":
            out.append("output")
        elif u.op in ("call_module", "call_function", "call_method"):
            key = op_name(gm, u)
            if key not in ("getattr", "size", "dim"):
                out.append(key)
    return sorted(set(out))


def float_weight_layers(model: nn.Module) -> list[tuple[str, int, str]]:
    """(layer, weight count, why) of each Conv2d / Linear on the input's data path that the placement kept
    float for a reason of its own (not --keep-float): typically a conv whose only readers are ops the
    per-operator table does not make integer (LightCNN's Max-Feature-Map: chunk, then torch.max of the
    halves), so an integer kernel would not pay. "w8a8" alone would imply those weights are integer."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    found = []
    for node in graph.nodes:
        why = node.meta.get(FLOAT_KEY)
        if node.op != "call_module" or not why or why.startswith("--keep-float"):
            continue
        module = model.get_submodule(str(node.target))
        if type(module) in (nn.Conv2d, nn.Linear):
            read = ", ".join(_readers(model, node))
            found.append((str(node.target), weight_count(module), f"{why} (read by {read})"))
    return found


def quant_plan(qmodel: nn.Module) -> dict[str, Any]:
    """JSON-able description of every quantized tensor of a model from `ptq` / `qat` / `rebuild`."""
    assert isinstance(qmodel, fx.GraphModule), "quant_plan takes the GraphModule returned by ptq/qat/rebuild"
    gm = qmodel
    acts = {n: m for n, m in gm.named_modules() if isinstance(m, ActQuant)}
    where: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in acts and isinstance(node.args[0], fx.Node):
            src = node.args[0]
            where[str(node.target)] = {
                "tensor": src.name,
                "producer": getattr(acts[str(node.target)], "producer", None) or src.op,
                "readers": _readers(gm, node),
            }
    layers: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = get_module(gm, str(node.target))
        if not isinstance(m, QuantConv2d | QuantLinear):
            continue
        lo, hi = weight_range(m.weight_bits)
        src = _producer_quantizer(gm, node.args[0])
        dst = _consumer_quantizer(gm, node)
        call = {
            "activation": _activation_after(gm, node),
            "input_quantizer": src,
            "output_quantizer": dst,
            "input": _act(acts[src]) if src else None,
            "output": _act(acts[dst]) if dst else None,
        }
        if str(node.target) in layers:  # shared weights: one more call of a layer, with its own grids
            layers[str(node.target)]["calls"].append(call)
            continue
        layers[str(node.target)] = {
            "type": "conv2d" if isinstance(m, QuantConv2d) else "linear",
            "weight_bits": m.weight_bits,
            "weight_quant_min": lo,
            "weight_quant_max": hi,
            "weight_scale": [float(s) for s in m.weight_scale],
            "weight_axis": 0,
            "channel_axis": getattr(m, "channel_axis", 1 if isinstance(m, QuantConv2d) else -1),
            "activation_rank": getattr(m, "activation_rank", None),
            **call,
            "calls": [call],
        }
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_q = _producer_quantizer(gm, output_node.args[0])
    return {
        "format": "edgeface.quant_plan/1",
        "weights": "symmetric per output channel (axis 0), zero point 0, narrow range",
        "activations": "affine per tensor, signed full range",
        "record": getattr(gm, "edgeface_quant", None),
        "input_quantizer": "aq_input" if "aq_input" in acts else None,
        "output_quantizer": out_q,
        "layers": layers,
        "quantizers": {n: {**_act(q), **where.get(n, {})} for n, q in acts.items()},
        "float_ops": {n.name: n.meta["edgeface_float"] for n in gm.graph.nodes if "edgeface_float" in n.meta},
        "opaque_modules": [{"name": n, "class": c, "weights": w} for n, c, w in opaque_weight_modules(gm)],
    }


def model_size_bytes(model: nn.Module) -> int:
    """Bytes to store the model at its stored bit widths.

    Quantized weights count `bits` per value, packed (int6 = 6 bits); their per-channel scales, biases and
    every other parameter (PReLU slopes, a BN left in float) count 32 bits; each activation quantizer 8 bytes
    (scale + zero point). BN running statistics are not counted: a deployed float model folds them too.
    """
    bits = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantConv2d | QuantLinear) and module.quant_enabled:
            bits += module.weight.numel() * module.weight_bits + module.weight_scale.numel() * 32
            seen.add(id(module.weight))
        elif isinstance(module, ActQuant):
            bits += 64
    for t in model.parameters():
        if id(t) not in seen:
            seen.add(id(t))
            bits += t.numel() * 32
    return (bits + 7) // 8


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of conv and linear layers for one input (hooks; batch size 1)."""
    import torch

    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += int(out.numel() // out.shape[0]) * k

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out.numel() // out.shape[0]) * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total
