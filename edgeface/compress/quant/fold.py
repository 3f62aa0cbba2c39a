"""Fold BatchNorm away before quantizing, keeping the float model's outputs.

Quantizing a conv and then applying a float BN scale would put the *unfolded* weights on the int grid, which
is not what an int8 runtime executes. So every BN is removed or made explicit, by pattern on the traced graph:

1. conv -> BN2d             fold into the conv (weights scaled per output channel, bias added).
2. BN2d -> flatten -> linear fold into the linear, exactly: each input feature belongs to one channel, so
                             the BN's per-channel scale/shift become column scales and a bias term (IResNet's
                             bn2 before fc).
3. linear -> BN1d           fold into the linear (IResNet's and mbf's `features` after the embedding).
4. any other BN2d           (IResNet's bn1 *before* a zero-padded conv) cannot be folded into that conv: the
                             shift would also apply to the padded border, which BN never touched. It becomes
                             an explicit per-channel affine, a 1x1 depthwise conv with bias, quantized like
                             any other conv.
A BN1d that follows no linear stays a float BN (rare; reported by `unfolded_batchnorms`).

Layer scale (`fold_layer_scale`, after graph.analyze): `gamma * linear(x)` with a parameter `gamma` that
varies only along the layer's channel axis (ConvNeXt / EdgeNeXt layer scale, `x * gamma` likewise) is
folded into that layer's weights and bias, so an integer runtime has one weighted op and no float
multiply. The channel axis comes from the traced shapes (a Linear on an NHWC tensor: the last axis).

Module names are preserved (the folded conv keeps its name and gains a `bias`; a BN turned affine keeps the
BN's name), so state_dict keys and ONNX initializer names stay readable and stable for `rebuild`.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch import fx, nn

from edgeface.errors import ModelError

BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace `model` (changed in place: torch.nn's attention and transformer-encoder modules
    are written out, written_out.py); a clear error for models with data-dependent control flow."""
    if isinstance(model, fx.GraphModule):
        return model
    from edgeface.compress.quant.written_out import write_out
    from edgeface.models.registry import scripted_hint

    if (hint := scripted_hint(model, "quantization")) is not None:
        raise ModelError(hint)
    write_out(model)
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types; all mean "this forward cannot be traced"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx for quantization "
            f"({type(e).__name__}: {first}); "
            "quantization needs a forward without data-dependent Python control flow: move such branches "
            "out of forward (or decide them in __init__)"
        ) from None


def get_module(gm: nn.Module, target: str) -> nn.Module:
    return gm.get_submodule(target)


def set_module(gm: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, new)


def _module_of(gm: fx.GraphModule, node: fx.Node, kinds: tuple[type, ...]) -> nn.Module | None:
    if node.op != "call_module":
        return None
    m = get_module(gm, str(node.target))
    return m if isinstance(m, kinds) else None


def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(x) = x * scale + shift, per channel, in eval mode."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    var, mean = bn.running_var.detach(), bn.running_mean.detach()  # type: ignore[union-attr]
    inv = torch.rsqrt(var + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma * inv
    return scale, beta - mean * scale


def _with_bias(layer: nn.Conv2d | nn.Linear) -> None:
    if layer.bias is None:
        out = layer.weight.shape[0]
        layer.bias = nn.Parameter(torch.zeros(out, dtype=layer.weight.dtype))


def _fold_after(layer: nn.Conv2d | nn.Linear, bn: nn.Module) -> None:
    scale, shift = bn_scale_shift(bn)
    _with_bias(layer)
    with torch.no_grad():
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(scale.reshape(shape))
        layer.bias.mul_(scale).add_(shift)  # type: ignore[union-attr]


def _fold_before_linear(bn: nn.Module, linear: nn.Linear) -> None:
    scale, shift = bn_scale_shift(bn)
    channels = scale.numel()
    if linear.in_features % channels:
        raise ModelError(
            f"cannot fold a BatchNorm of {channels} channels into a Linear of {linear.in_features} inputs "
            "after a flatten; try --keep-float on that Linear"
        )
    per = linear.in_features // channels  # flatten of (C, H, W): channel-major
    s, t = scale.repeat_interleave(per), shift.repeat_interleave(per)
    _with_bias(linear)
    with torch.no_grad():
        linear.bias.add_(linear.weight @ t)  # type: ignore[union-attr]
        linear.weight.mul_(s[None, :])


def affine_conv(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A BN that cannot be folded, as the 1x1 depthwise conv an int8 runtime executes anyway."""
    scale, shift = bn_scale_shift(bn)
    c = scale.numel()
    conv = nn.Conv2d(c, c, 1, groups=c, bias=True)
    with torch.no_grad():
        conv.weight.copy_(scale.reshape(c, 1, 1, 1))
        conv.bias.copy_(shift)  # type: ignore[union-attr]
    return conv


def _single_use(gm: fx.GraphModule, node: fx.Node) -> bool:
    """The node feeds exactly one consumer and its module is not called anywhere else (shared weights)."""
    if len(node.users) != 1:
        return False
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    return len(calls) == 1


def _is_flatten(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1
    m = _module_of(gm, node, (nn.Flatten,))
    return m is not None and m.start_dim == 1 and m.end_dim == -1  # type: ignore[union-attr]


def _is_identity_in_eval(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _module_of(gm, node, (nn.Dropout, nn.Identity)) is not None


def _remove(gm: fx.GraphModule, node: fx.Node, replacement: fx.Node) -> None:
    node.replace_all_uses_with(replacement)
    gm.graph.erase_node(node)


def fold_bn(model: nn.Module, inplace: bool = False, example: torch.Tensor | None = None) -> fx.GraphModule:
    """A float GraphModule computing the same function as `model` (eval mode) with BN folded or explicit.

    With `example` (an input batch) the graph is analysed first, so a BatchNorm1d after a Linear is folded
    only where the Linear's channels are the BN's (a 2-D [batch, features] output).
    """
    src = model if inplace else copy.deepcopy(model)
    src.eval()
    gm = trace(src)
    graph = gm.graph
    if example is not None:
        from edgeface.compress.quant.graph import analyze

        analyze(gm, example)
    for node in list(graph.nodes):  # 1. conv -> BN
        bn = _module_of(gm, node, (nn.BatchNorm2d,))
        if bn is None or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        conv = _module_of(gm, prev, (nn.Conv2d,))
        if conv is not None and _single_use(gm, prev):
            _fold_after(conv, bn)  # type: ignore[arg-type]
            _remove(gm, node, prev)
    for node in list(graph.nodes):  # 2. BN2d -> flatten -> (dropout) -> linear
        bn = _module_of(gm, node, (nn.BatchNorm2d,))
        if bn is None or len(node.users) != 1:
            continue
        chain = [next(iter(node.users))]
        if not _is_flatten(gm, chain[0]):
            continue
        while len(chain[-1].users) == 1 and _is_identity_in_eval(gm, next(iter(chain[-1].users))):
            chain.append(next(iter(chain[-1].users)))
        if len(chain[-1].users) != 1:
            continue
        consumer = next(iter(chain[-1].users))
        linear = _module_of(gm, consumer, (nn.Linear,))
        if linear is not None and _single_use(gm, consumer) and consumer.args[0] is chain[-1]:
            _fold_before_linear(bn, linear)  # type: ignore[arg-type]
            _remove(gm, node, node.args[0])  # type: ignore[arg-type]
    for node in list(graph.nodes):  # 3. linear -> BN1d
        bn = _module_of(gm, node, (nn.BatchNorm1d,))
        if bn is None or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        linear = _module_of(gm, prev, (nn.Linear,))
        meta = prev.meta.get("edgeface_info")
        if meta is not None and (meta.shape is None or len(meta.shape) != 2):
            continue  # a Linear on [batch, tokens, features]: BN1d's channels are not the Linear's
        if linear is not None and _single_use(gm, prev):
            _fold_after(linear, bn)  # type: ignore[arg-type]
            _remove(gm, node, prev)
    for node in list(graph.nodes):  # 4. explicit affine for the rest
        bn = _module_of(gm, node, (nn.BatchNorm2d,))
        if bn is not None:
            set_module(gm, str(node.target), affine_conv(bn))  # type: ignore[arg-type]
    graph.eliminate_dead_code()
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _param_of(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None


def _drop_attr(gm: fx.GraphModule, target: str) -> None:
    """Remove a parameter nothing reads any more (DDP refuses parameters without gradients)."""
    if any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return
    owner_name, _, attr = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    if hasattr(owner, attr):
        delattr(owner, attr)


def fold_layer_scale(gm: fx.GraphModule) -> list[str]:
    """Fold `gamma * layer(x)` (gamma varying along the layer's channel axis only) into the layer.

    Needs graph.analyze to have run on `gm` (shapes and channel axes); returns the folded parameters.
    """
    from edgeface.compress.quant.graph import INFO_KEY, channel_axis

    folded: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.mul, torch.mul) or len(node.args) != 2:
            continue
        a, b = node.args
        gamma_node, x = (a, b) if _param_of(gm, a) is not None else (b, a)
        gamma = _param_of(gm, gamma_node)
        if gamma is None or not isinstance(x, fx.Node):
            continue
        chain = [x]  # dropout / identity between the layer and the multiply
        while _is_identity_in_eval(gm, chain[-1]) and isinstance(chain[-1].args[0], fx.Node):
            chain.append(chain[-1].args[0])
        layer_node = chain[-1]
        layer = _module_of(gm, layer_node, (nn.Conv2d, nn.Linear))
        meta = layer_node.meta.get(INFO_KEY)
        if layer is None or meta is None or meta.shape is None or not _single_use(gm, layer_node):
            continue
        if any(len(c.users) != 1 for c in chain):
            continue
        axis = channel_axis(gm, layer_node)
        out_shape = meta.shape
        channels = layer.weight.shape[0]
        g_shape = (1,) * (len(out_shape) - gamma.dim()) + tuple(gamma.shape)
        if axis is None or len(g_shape) != len(out_shape) or g_shape[axis] != channels:
            continue
        if any(s != 1 for i, s in enumerate(g_shape) if i != axis):
            continue
        scale = gamma.detach().reshape(channels)
        _with_bias(layer)  # type: ignore[arg-type]
        with torch.no_grad():
            layer.weight.mul_(scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
            layer.bias.mul_(scale)  # type: ignore[union-attr]
        node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
        if not gamma_node.users:
            gm.graph.erase_node(gamma_node)
            _drop_attr(gm, str(gamma_node.target))
        folded.append(str(gamma_node.target))
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


def unfolded_batchnorms(gm: fx.GraphModule) -> list[str]:
    return [n for n, m in gm.named_modules() if isinstance(m, BN)]


def is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An op that only moves values around, so a quantized tensor stays on its grid (table: same_grid)."""
    from edgeface.compress.quant.graph import rule_of

    if node.op not in ("call_module", "call_function", "call_method"):
        return False
    rule = rule_of(gm, node)
    return rule is not None and rule.kind == "same_grid"
