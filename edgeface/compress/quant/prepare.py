"""Put fake quantizers where an integer runtime has integer tensors, decided per operator from one table.

On a BN-folded graph whose nodes were run once on an example input (graph.analyze), every op is looked up
in edgeface.quant_ops.TORCH_OPS, and only floating-point tensors computed from the model input are ever
considered (shapes, `H * W`, indices, and constants such as a positional encoding built from the input's
shape are not; a conv fed only by such constants stays float, an exporter folds it):
- "weighted" (Conv2d, Linear) and "compute" ops (tensor + tensor, tensor * tensor, concat, average
  pooling, fused activations) can run in integer arithmetic;
- an integer kernel that must write integers (QLinearConv, QLinearAdd, ...: TorchOpRule.int_output) only
  pays off when an integer op reads its output, so such an op stays float otherwise; that can leave its
  producers without integer readers too, hence a fixed point. A Linear may write float (ONNX Runtime
  fuses DQ -> MatMul into MatMulIntegerToFloat), so it is int8 whenever its input is a float tensor;
- the output of an integer op that an integer op (or the model output) reads is quantized, after its
  fused activation (ReLU, ReLU6, PReLU, ...), for all its readers: that is what the integer kernel writes;
- a float op's output (LayerNorm, GELU, softmax, attention products, anything the table does not know) is
  quantized only on its edges into integer ops, so float readers of the same tensor keep the exact value
  (a residual path, a shape), as a QDQ graph does.
On a CNN this is the model input, every conv/linear output and every residual add; on a CNN-transformer
hybrid, the inputs of the Linear layers (docs/compression.md has the measurements behind it).

`keep_float` (the `--keep-float` option) names layers (module paths; everything inside them), graph nodes or
table keys ("matmul", "Linear") that must stay float. Quantizers are top-level submodules named
`aq_<producer>` (`aq_input` for the model input, `aq_<layer>` for a conv/linear output, `aq_<node>` else).
The record of bits per layer and quantizer (`resolve_bits`), the input shape and `keep_float` are all
`rebuild` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from edgeface.compress.quant.fakequant import ActQuant, QuantConv2d, QuantLinear, check_bits
from edgeface.compress.quant.fold import get_module, set_module
from edgeface.compress.quant.graph import INFO_KEY, channel_axis, info, is_float_data, op_name, rule_of
from edgeface.errors import EdgefaceError, ModelError
from edgeface.quant_ops import torch_fused

INPUT = "aq_input"
FLOAT_KEY = "edgeface_float"  # node meta: why an op that computes on the input stays float
GLOBAL_POOL_DIMS = ({2, 3}, {-1, -2}, {2, -1}, {-2, 3})


def aq_name(producer: str) -> str:
    return "aq_" + producer.replace(".", "_")


@dataclass
class Point:
    """One activation quantizer: the tensor `end` (a node's output) it rounds, and what it belongs to."""

    name: str
    end: fx.Node
    layer: str | None = None  # the weighted layer whose output this is
    producer: str = ""  # op that made the tensor (table key)
    readers: list[str] | None = None  # only these consumer nodes read the rounded value (None: all)


@dataclass
class Placement:
    """Which layers are integer and where the quantizers go, for one analysed graph."""

    layers: list[str]  # weighted integer layers (module names), in execution order
    points: list[Point]
    int_ops: list[str] = field(default_factory=list)  # graph nodes that run in integer arithmetic
    float_ops: dict[str, str] = field(default_factory=dict)  # node -> why it stays float (data ops only)
    keep_float: list[str] = field(default_factory=list)
    axes: dict[str, int] = field(default_factory=dict)  # weighted layer -> channel axis of its activations
    ranks: dict[str, int] = field(default_factory=dict)  # weighted layer -> rank of its output tensor
    kinds: dict[str, str] = field(default_factory=dict)  # weighted layer -> layer_class ("Conv2d", "Linear")


def _matches(gm: nn.Module, node: fx.Node, keep: Sequence[str]) -> str | None:
    """The --keep-float entry that covers `node`, if any."""
    target = str(node.target) if node.op == "call_module" else ""
    for k in keep:
        if k == node.name or k == op_name(gm, node):
            return k
        if target and (target == k or target.startswith(k + ".")):
            return k
        # a parameter / function inside a kept module (e.g. a traced block): its node name has the prefix
        if node.name.startswith(k.replace(".", "_") + "_"):
            return k
    return None


def _tensor_args(node: fx.Node) -> list[Any]:
    if node.op == "call_function" and op_name_key(node) == "cat":
        seq = node.args[0] if node.args else node.kwargs.get("tensors", [])
        return list(seq) if isinstance(seq, list | tuple) else [seq]
    return list(node.args)


def op_name_key(node: fx.Node) -> str:
    i = node.meta.get(INFO_KEY)
    return i.op if i is not None else ""


def _is_global_pool(node: fx.Node) -> bool:
    src = node.args[0] if node.args else None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not isinstance(src, fx.Node) or src.meta.get(INFO_KEY) is None:
        return False
    shape = info(src).shape
    dims_set = set(dims) if isinstance(dims, list | tuple) else {dims}
    return shape is not None and len(shape) == 4 and dims_set in GLOBAL_POOL_DIMS


def _weighted(gm: fx.GraphModule, node: fx.Node) -> bool:
    rule = rule_of(gm, node)
    return node.op == "call_module" and rule is not None and rule.kind == "weighted"


def _integer_reason(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """None if `node` runs as an integer op here, else why it stays float."""
    rule = rule_of(gm, node)
    key = op_name(gm, node)
    if rule is None:
        return f"'{key}' is not in the per-operator table (edgeface.quant_ops.TORCH_OPS): stays float"
    if rule.kind in ("same_grid", "shape"):
        return ""  # not an op of its own
    if rule.kind == "float":
        return rule.why
    if not is_float_data(node):
        return ""  # computes on shapes/constants only: folded by exporters, never quantized
    if rule.kind == "weighted":
        module = get_module(gm, str(node.target)) if node.op == "call_module" else None
        if not isinstance(module, nn.Conv2d | nn.Linear) or not node.args or not is_float_data(node.args[0]):
            return "weighted op without a quantizable float input"
        return None
    # compute
    if key in ("add", "mul"):
        a = node.args[:2]
        if len(a) == 2 and all(is_float_data(x) for x in a):
            return None
        return f"{key} with a constant or a number: stays float"
    if key == "cat":
        parts = _tensor_args(node)
        return None if parts and all(is_float_data(p) for p in parts) else "concat of non-data tensors"
    if key == "mean":
        return None if _is_global_pool(node) else "a reduction other than global average pooling"
    src = node.args[0] if node.args else None
    return None if is_float_data(src) else f"{key} on a non-data input"


def _fused_into(gm: fx.GraphModule, node: fx.Node, int_ops: set[str]) -> fx.Node | None:
    """The integer op whose output range `node` (an activation) is fused into, if any."""
    if not torch_fused(op_name(gm, node)) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src = node.args[0]
    if src.name in int_ops and len(src.users) == 1 and not torch_fused(op_name(gm, src)):
        return src
    return None


def _root(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """Walk back through ops that keep values on their grid (reshape, permute, dropout, getitem, ...)."""
    seen = 0
    while seen < 10_000:
        seen += 1
        rule = rule_of(gm, node)
        if rule is None or rule.kind != "same_grid" or not node.args or not isinstance(node.args[0], fx.Node):
            return node
        node = node.args[0]
    return node


def placement(gm: fx.GraphModule, keep_float: Sequence[str] = ()) -> Placement:
    """Integer ops and quantization points of an analysed graph (see the module docstring)."""
    keep = list(keep_float)
    used_keep: set[str] = set()
    int_ops: set[str] = set()
    float_ops: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        hit = _matches(gm, node, keep)
        if hit is not None:
            used_keep.add(hit)
            if is_float_data(node):
                float_ops[node.name] = f"--keep-float {hit}"
            continue
        if node.meta.get(INFO_KEY) is None:
            continue
        reason = _integer_reason(gm, node)
        if reason is None:
            int_ops.add(node.name)
        elif reason and is_float_data(node):
            float_ops[node.name] = reason
    unknown = [k for k in keep if k not in used_keep]
    if unknown:
        example = next((n.target for n in gm.graph.nodes if n.op == "call_module"), "stem.0")
        raise EdgefaceError(
            f"--keep-float: nothing in the model is called '{unknown[0]}'; give a layer name (e.g. "
            f"{example}), a graph node or an op name from the table (e.g. Linear, matmul)"
        )

    def end_of(node: fx.Node) -> fx.Node:
        """The node after which `node`'s output is rounded: after a fused activation (ReLU, PReLU, ...)."""
        if len(node.users) == 1:
            user = next(iter(node.users))
            if user.name in int_ops and _fused_into(gm, user, int_ops) is node:
                return user
        return node

    def consumed_by_int(end: fx.Node) -> bool:
        """Some integer op (or the model output) reads `end`, looking through same-grid ops."""
        stack, seen = list(end.users), set()
        while stack:
            u = stack.pop()
            if u.name in seen:
                continue
            seen.add(u.name)
            if u.op == "output" or (u.name in int_ops and _fused_into(gm, u, int_ops) is None):
                return True
            rule = rule_of(gm, u) if u.op != "output" else None
            if rule is not None and rule.kind == "same_grid":
                stack.extend(u.users)
        return False

    # Layers that are integer without `keep_float` stay integer when a kept-float layer leaves them without
    # integer readers: they then write integers that the float reader dequantizes. Otherwise one layer kept
    # float near a CNN's end would carry the float backwards block by block through the residual adds
    # (pruned mobilefacenet with its 7x7 GDC kept float went from 51 integer layers to 1).
    integer_anyway = set(placement(gm).int_ops) if keep else set()

    def fed_int(node: fx.Node) -> bool:
        if node.name not in integer_anyway or not _weighted(gm, node):
            return False
        src = node.args[0] if node.args else None
        return isinstance(src, fx.Node) and _root(gm, src).name in int_ops

    # An integer kernel that must write an integer output (QLinearConv, QLinearAdd, ...) only pays off
    # when an integer op reads that output; otherwise it stays float, which can in turn leave its
    # producers without integer readers: iterate to the fixed point.
    changed = True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.name not in int_ops or _fused_into(gm, node, int_ops) is not None:
                continue
            if needs_int_output(gm, node) and not fed_int(node) and not consumed_by_int(end_of(node)):
                fused = end_of(node)
                int_ops.discard(node.name)
                int_ops.discard(fused.name)
                for n in {node, fused}:
                    float_ops[n.name] = "no integer op reads its output, so an integer kernel would not pay"
                changed = True

    order = [n for n in gm.graph.nodes if n.name in int_ops]
    ends: dict[str, Point] = {}  # node name whose output is quantized for all its readers -> point
    edges: dict[str, Point] = {}  # node name -> point rounding it for some integer readers only
    points: list[Point] = []

    def add_point(name: str, end: fx.Node, layer: str | None, producer: str) -> None:
        if end.name not in ends:
            ends[end.name] = Point(name, end, layer, producer)
            points.append(ends[end.name])

    def add_output_point(node: fx.Node) -> None:
        layer = str(node.target) if _weighted(gm, node) else None
        add_point(aq_name(node.name), end_of(node), layer, op_name(gm, node))

    placeholder = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    if placeholder is not None and is_float_data(placeholder) and consumed_by_int(placeholder):
        add_point(INPUT, placeholder, None, "input")
    for node in order:
        if _fused_into(gm, node, int_ops) is None and consumed_by_int(end_of(node)):
            add_output_point(node)
    for node in order:
        if _fused_into(gm, node, int_ops) is not None:
            continue  # its producer's output point covers it
        srcs = [node.args[0]] if node.op == "call_module" else _tensor_args(node)
        for src in srcs:
            if not is_float_data(src):
                continue
            root = _root(gm, src)
            if root.name in ends:
                continue
            if root.name in int_ops:  # an integer producer writes integers for every reader
                add_output_point(_fused_into(gm, root, int_ops) or root)
            elif src.name in edges:
                edges[src.name].readers.append(node.name)  # type: ignore[union-attr]
            else:
                # a float op's output: rounded on the way into the integer op only, so float readers of
                # the same tensor (a residual path, a shape) keep the exact value, as in a QDQ graph
                name = aq_name(
                    root.name if root.name not in {e.end.name for e in edges.values()} else src.name
                )
                if any(p.name == name for p in points):
                    name = aq_name(src.name)
                edges[src.name] = Point(name, src, None, op_name(gm, root), readers=[node.name])
                points.append(edges[src.name])
    layers = [str(n.target) for n in order if _weighted(gm, n)]
    axes = {str(n.target): channel_axis(gm, n) for n in order if str(n.target) in layers}
    # points in graph order, so names and bit plans read in execution order
    position = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    points.sort(key=lambda p: position[p.end.name])
    return Placement(
        layers=layers,
        points=points,
        int_ops=[n.name for n in order],
        float_ops=float_ops,
        keep_float=keep,
        axes={k: int(v) for k, v in axes.items() if v is not None},
        ranks={str(n.target): len(info(n).shape or ()) for n in order if str(n.target) in layers},
        kinds={name: layer_class(gm.get_submodule(name)) for name in layers},
    )


def needs_int_output(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the op's integer kernel must write integers (table: TorchOpRule.int_output)."""
    from edgeface.quant_ops import torch_int_output

    return torch_int_output(op_name(gm, node))


def parse_bits(bits: str) -> tuple[int, int]:
    text = str(bits).lower()
    if not (text.startswith("w") and "a" in text):
        raise EdgefaceError(f"unsupported --bits '{bits}': use w8a8, w6a6 or mixed")
    w, _, a = text[1:].partition("a")
    try:
        return check_bits(int(w), "weight bits"), check_bits(int(a), "activation bits")
    except ValueError:
        raise EdgefaceError(f"unsupported --bits '{bits}': use w8a8, w6a6 or mixed") from None


def layer_class(module: nn.Module) -> str:
    """The class name `--layer-bits CLASS=BITS` knows a weighted layer by: "Linear" or "Conv2d", whatever
    subclass the model (timm, a user's own) or the quantized checkpoint (QuantLinear) uses."""
    return "Linear" if isinstance(module, nn.Linear) else "Conv2d"


def expand_layer_bits(place: Placement, layer_bits: dict[str, int] | None) -> dict[str, int]:
    """`layer_bits` with each layer-class key ("Linear") replaced by every layer of that class; a layer's
    own entry wins over its class's, in any order (quantizer names pass through)."""
    classes = set(place.kinds.values()) - set(place.layers)
    given = layer_bits or {}
    by_class = {layer: given[k] for layer, k in place.kinds.items() if k in given and k in classes}
    return {**by_class, **{k: b for k, b in given.items() if k not in classes}}


def resolve_bits(
    place: Placement, bits: str, layer_bits: dict[str, int] | None = None, keep_ends_8bit: bool = True
) -> dict[str, dict[str, int]]:
    """Per-layer weight bits and per-quantizer activation bits for a preset plus overrides.

    `bits` is "w8a8" or "w6a6" (any wNaM with N, M in 4..8). For presets below 8 bits the first and last
    weight layers stay at 8 bits (`keep_ends_8bit`), the usual choice: the first sees raw pixels and the last
    writes the embedding. `layer_bits` maps a layer (e.g. "conv1.0"), a quantizer name (e.g. "aq_add_3") or
    a layer class (e.g. "Linear": every such layer; a named layer's own entry wins) to bits; a layer's
    override sets its weights and its output activation.
    """
    w_default, a_default = parse_bits(bits)
    layers = place.layers
    if not layers:
        raise ModelError(
            "the model has no Conv2d or Linear layer that runs on its input to quantize "
            f"(ops left float: {', '.join(sorted(set(place.float_ops.values())))[:200] or 'none'})"
        )
    weights = {name: w_default for name in layers}
    acts = {p.name: (8 if p.name == INPUT else a_default) for p in place.points}
    out_of = {p.layer: p.name for p in place.points if p.layer}
    if keep_ends_8bit and (w_default < 8 or a_default < 8):
        for end in (layers[0], layers[-1]):
            weights[end] = 8
            if end in out_of:
                acts[out_of[end]] = 8
    kinds = set(place.kinds.values())
    for name, b in expand_layer_bits(place, layer_bits).items():
        b = check_bits(b, f"bits for '{name}'")
        if name in weights:
            weights[name] = b
            if name in out_of:
                acts[out_of[name]] = b
        elif name in acts:
            acts[name] = b
        else:
            raise EdgefaceError(
                f"--layer-bits: no quantizable layer '{name}'; layers are e.g. {', '.join(layers[:4])}, ... "
                f"(all {len(layers)}: see `quant_plan`), or a layer class: {', '.join(sorted(kinds))}"
            )
    return {"weights": weights, "activations": acts}


def insert_quantizers(
    gm: fx.GraphModule, place: Placement, plan: dict[str, dict[str, int]]
) -> fx.GraphModule:
    """Swap in quantized layers and activation quantizers in place, following a `resolve_bits` plan."""
    if set(plan["weights"]) != set(place.layers):
        extra = sorted(set(plan["weights"]) ^ set(place.layers))
        raise EdgefaceError(
            f"quantization record does not fit this model: weight layers differ ({', '.join(extra[:3])})"
        )
    for name, b in plan["weights"].items():
        layer = get_module(gm, name)
        q: nn.Module
        if isinstance(layer, nn.Conv2d):
            q = QuantConv2d.from_float(layer, b)
        elif isinstance(layer, nn.Linear):
            q = QuantLinear.from_float(layer, b)
        else:
            raise EdgefaceError(f"quantization record names '{name}', which is not a conv/linear layer here")
        q.channel_axis = place.axes.get(name, 1 if isinstance(q, QuantConv2d) else -1)
        q.activation_rank = place.ranks.get(name)
        set_module(gm, name, q)
    for p in place.points:
        if p.name not in plan["activations"]:
            raise EdgefaceError(f"quantization record lacks activation quantizer '{p.name}' (model mismatch)")
        aq = ActQuant(plan["activations"][p.name])
        aq.label, aq.producer = p.name, p.producer
        gm.add_module(p.name, aq)
        with gm.graph.inserting_after(p.end):
            node = gm.graph.call_module(p.name, (p.end,))
        node.meta[INFO_KEY] = p.end.meta.get(INFO_KEY)
        readers = set(p.readers) if p.readers is not None else None
        p.end.replace_all_uses_with(
            node,
            delete_user_cb=lambda user, node=node, r=readers: (
                user is not node and (r is None or user.name in r)
            ),
        )
    for node in gm.graph.nodes:  # node meta survives deepcopy (GraphModule attributes do not)
        if node.name in place.float_ops:
            node.meta[FLOAT_KEY] = place.float_ops[node.name]
    gm.graph.lint()
    gm.recompile()
    return gm


def activation_quantizers(model: nn.Module) -> dict[str, ActQuant]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ActQuant)}


def weight_quantizers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


def weight_count(module: nn.Module) -> int:
    """Elements of the weight matrices and kernels in `module` (biases and norm scales left out)."""
    return sum(p.numel() for k, p in module.named_parameters() if p.dim() >= 2 and k.endswith("weight"))


def opaque_weight_modules(model: nn.Module) -> list[tuple[str, str, int]]:
    """(module name, class, weight count) of each module the traced forward calls as one opaque op that
    holds weight matrices or kernels: an RNN, an attention written_out.py does not write out (add_bias_kv,
    a subclass with its own forward). The graph
    analysis does not enter such a call, so its weights stay float whatever the bits; "w8a8" alone would
    imply they are integer. (Conv2d and Linear layers the placement keeps float are its own choice, and
    the export's report lists them with the reason.)"""
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    found = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        if isinstance(module, nn.Conv2d | nn.Linear | QuantConv2d | QuantLinear):
            continue
        count = weight_count(module)
        if count:
            found.append((str(node.target), type(module).__name__, count))
    return found


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


def example_input(input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    """A fixed pseudo-random input for the analysis pass (values do not matter, shapes and dtypes do)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *[int(s) for s in input_shape], generator=g)
