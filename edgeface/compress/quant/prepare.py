"""Put fake quantizers where an integer runtime has integer tensors.

On a BN-folded graph (see fold.py):
- every Conv2d / Linear becomes QuantConv2d / QuantLinear (weights per channel at its layer's bits);
- an ActQuant goes on the model input, on the output of every conv/linear *unit* (after its activation when
  the conv feeds exactly one ReLU / ReLU6 / PReLU / LeakyReLU / Hardswish, since runtimes fuse those), and on
  the output of every tensor add / mul / concat / average pool (after a following activation, likewise);
- flatten, reshape, dropout and max-pool leave values on their grid and get nothing.
So every tensor that crosses between ops is on an int grid, which is what a fully-int8 QDQ export needs.

Activation quantizers are top-level submodules named `aq_<producer>` (dots -> underscores); the record of
bits per layer (`resolve_bits`) is all `rebuild` needs to recreate the same structure.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from edgeface.compress.quant.fakequant import ActQuant, QuantConv2d, QuantLinear, check_bits
from edgeface.compress.quant.fold import get_module, set_module
from edgeface.errors import EdgefaceError

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.Hardswish)
ACTIVATION_FUNCTIONS = (
    torch.relu,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.leaky_relu,
    nn.functional.hardswish,
)
MERGE_FUNCTIONS = (
    operator.add,
    torch.add,
    operator.mul,
    torch.mul,
    torch.cat,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.avg_pool2d,
    torch.mean,
)
MERGE_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
INPUT = "aq_input"


def aq_name(producer: str) -> str:
    return "aq_" + producer.replace(".", "_")


def _is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(get_module(gm, str(node.target)), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_merge(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(get_module(gm, str(node.target)), MERGE_MODULES)
    if node.op == "call_function" and node.target in MERGE_FUNCTIONS:
        if node.target in (operator.add, torch.add, operator.mul, torch.mul):
            return sum(isinstance(a, fx.Node) for a in node.args[:2]) == 2  # tensor (+|*) tensor only
        return True
    return node.op == "call_method" and node.target in ("add", "mul", "mean")


def weight_layers(gm: fx.GraphModule) -> list[str]:
    """Conv/linear module names in execution order."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(get_module(gm, str(node.target)), nn.Conv2d | nn.Linear):
            out.append(str(node.target))
    return out


def quant_points(gm: fx.GraphModule) -> list[tuple[str, fx.Node, str | None]]:
    """(quantizer name, node whose output it quantizes, weight layer it belongs to or None), in order."""
    points: list[tuple[str, fx.Node, str | None]] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder" and not points:
            points.append((INPUT, node, None))
            continue
        is_layer = node.op == "call_module" and isinstance(
            get_module(gm, str(node.target)), nn.Conv2d | nn.Linear
        )
        if not (is_layer or _is_merge(gm, node)):
            continue
        end = node
        if len(end.users) == 1 and _is_activation(gm, next(iter(end.users))):
            end = next(iter(end.users))
        producer = str(node.target) if is_layer else node.name
        points.append((aq_name(producer), end, str(node.target) if is_layer else None))
    return points


def resolve_bits(
    gm: fx.GraphModule, bits: str, layer_bits: dict[str, int] | None = None, keep_ends_8bit: bool = True
) -> dict[str, dict[str, int]]:
    """Per-layer weight bits and per-quantizer activation bits for a preset plus overrides.

    `bits` is "w8a8" or "w6a6" (any wNaM with N, M in 4..8). For presets below 8 bits the first and last
    weight layers stay at 8 bits (`keep_ends_8bit`), the usual choice: the first sees raw pixels and the last
    writes the embedding. `layer_bits` maps a layer (e.g. "conv1.0") or a quantizer name (e.g. "aq_add_3")
    to bits; a layer's override sets its weights and its output activation.
    """
    w_default, a_default = parse_bits(bits)
    layers = weight_layers(gm)
    if not layers:
        raise EdgefaceError("the model has no Conv2d or Linear layer to quantize")
    weights = {name: w_default for name in layers}
    points = quant_points(gm)
    acts = {name: (8 if name == INPUT else a_default) for name, _, _ in points}
    if keep_ends_8bit and (w_default < 8 or a_default < 8):
        for end in (layers[0], layers[-1]):
            weights[end] = 8
            if aq_name(end) in acts:
                acts[aq_name(end)] = 8
    for name, b in (layer_bits or {}).items():
        b = check_bits(b, f"bits for '{name}'")
        if name in weights:
            weights[name] = b
            if aq_name(name) in acts:
                acts[aq_name(name)] = b
        elif name in acts:
            acts[name] = b
        else:
            raise EdgefaceError(
                f"--layer-bits: no quantizable layer '{name}'; layers are e.g. {', '.join(layers[:4])}, ... "
                f"(all {len(layers)}: see `quant_plan`)"
            )
    return {"weights": weights, "activations": acts}


def parse_bits(bits: str) -> tuple[int, int]:
    text = str(bits).lower()
    if not (text.startswith("w") and "a" in text):
        raise EdgefaceError(f"unsupported --bits '{bits}': use w8a8, w6a6 or mixed")
    w, _, a = text[1:].partition("a")
    try:
        return check_bits(int(w), "weight bits"), check_bits(int(a), "activation bits")
    except ValueError:
        raise EdgefaceError(f"unsupported --bits '{bits}': use w8a8, w6a6 or mixed") from None


def insert_quantizers(gm: fx.GraphModule, plan: dict[str, dict[str, int]]) -> fx.GraphModule:
    """Swap in quantized layers and activation quantizers in place, following a `resolve_bits` plan."""
    for name, b in plan["weights"].items():
        layer = get_module(gm, name)
        q: nn.Module
        if isinstance(layer, nn.Conv2d):
            q = QuantConv2d.from_float(layer, b)
        elif isinstance(layer, nn.Linear):
            q = QuantLinear.from_float(layer, b)
        else:
            raise EdgefaceError(f"quantization record names '{name}', which is not a conv/linear layer here")
        set_module(gm, name, q)
    for name, end, _ in quant_points(gm):
        if name not in plan["activations"]:
            raise EdgefaceError(f"quantization record lacks activation quantizer '{name}' (model mismatch)")
        gm.add_module(name, ActQuant(plan["activations"][name]))
        with gm.graph.inserting_after(end):
            aq = gm.graph.call_module(name, (end,))
        end.replace_all_uses_with(aq, delete_user_cb=lambda user, aq=aq: user is not aq)
    gm.graph.lint()
    gm.recompile()
    return gm


def activation_quantizers(model: nn.Module) -> dict[str, ActQuant]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ActQuant)}


def weight_quantizers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


def set_quant_enabled(model: nn.Module, weights: bool | None = None, activations: bool | None = None) -> None:
    for m in model.modules():
        if weights is not None and isinstance(m, QuantConv2d | QuantLinear):
            m.quant_enabled = weights
        if activations is not None and isinstance(m, ActQuant):
            m.enabled = activations


def describe(plan: dict[str, Any]) -> dict[str, int]:
    """Count of layers per weight bit width, e.g. {"8": 3, "6": 49}: a one-line summary for logs."""
    counts: dict[str, int] = {}
    for b in plan["weights"].values():
        counts[str(b)] = counts.get(str(b), 0) + 1
    return dict(sorted(counts.items(), reverse=True))
