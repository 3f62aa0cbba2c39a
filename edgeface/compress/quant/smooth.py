"""Outlier channels before an int8 layer: migrate them into that layer's weights (SmoothQuant-style).

In a CNN-transformer hybrid the float tensors that feed int8 Linear layers (a LayerNorm's output, a GELU's
output) have a few channels tens of times larger than the rest, and one per-tensor int8 grid sized for
those leaves the other channels with a handful of levels. Every reader of such a tensor here is a
conv/linear quantized per output channel, so the float function does not change if channel c is divided
by s_c and input channel c of each reader's weight is multiplied by s_c; with
s_c = max|x_c|^alpha / max|w_c|^(1 - alpha) (Xiao et al., SmoothQuant) the activation channels even out at
the price of a little more spread in the weights, which per-channel weight scales absorb.

Where the division goes:
- a LayerNorm with an affine weight whose every reader absorbs the factor: into its weight and bias (free);
- anywhere else (a GELU's output, a LayerNorm also read by float ops): an explicit `ChannelScale` module on
  the edge into the int8 layers, a float per-channel multiply that an exporter folds into the producer's
  last multiply (GELU's 0.5 x (1 + erf)) or runs as one float Mul. Its position is structure (replayed by
  `rebuild` from the graph alone); its values come from calibration.
Every migration is checked on an example input and undone if the model's float output moved, so a channel
mapping broken by a permute or reshape can never change the function.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from edgeface.compress.quant.fakequant import (
    act_range,
    affine_qparams,
    fake_quant_weight,
    weight_scale_maxabs,
)
from edgeface.compress.quant.graph import INFO_KEY, info, op_name
from edgeface.compress.quant.prepare import Placement, example_input

SCALE_RANGE = (1e-2, 1e2)


class ChannelScale(nn.Module):
    """x / scale along one axis: the float half of a migration whose other half is in the next weights."""

    def __init__(self, channels: int, axis: int) -> None:
        super().__init__()
        self.axis = int(axis)
        self.register_buffer("scale", torch.ones(channels))

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}, axis={self.axis}"

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return x / self.scale.reshape(shape)


def _ln_params(gm: fx.GraphModule, node: fx.Node) -> tuple[Tensor, Tensor | None] | None:
    """Affine weight and bias of a LayerNorm module or F.layer_norm call (None if it has none)."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            return m.weight, m.bias
        return None
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "layer_norm":
        refs = [
            node.args[i] if len(node.args) > i else node.kwargs.get(key)
            for i, key in ((2, "weight"), (3, "bias"))
        ]
        tensors: list[Any] = []
        for ref in refs:
            value: Any = None
            if isinstance(ref, fx.Node) and ref.op == "get_attr":
                value = gm
                for part in str(ref.target).split("."):
                    value = getattr(value, part)
            tensors.append(value if isinstance(value, Tensor) else None)
        if tensors[0] is not None:
            return tensors[0], tensors[1]
    return None


def _input_view(layer: nn.Module, channels: int) -> tuple[int, ...] | None:
    """Shape broadcasting a per-input-channel factor onto `layer.weight`; None if it does not fit."""
    if isinstance(layer, nn.Linear) and layer.in_features == channels:
        return (1, channels)
    if isinstance(layer, nn.Conv2d):
        if layer.groups == 1 and layer.in_channels == channels:
            return (1, channels, 1, 1)
        if layer.groups == layer.in_channels == layer.out_channels == channels:
            return (channels, 1, 1, 1)  # depthwise: input channel c is output channel c
    return None


def _reader_axis(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


def _weight_in_max(layer: nn.Module, channels: int) -> Tensor:
    """max |w| per input channel."""
    w = layer.weight.detach().abs()  # type: ignore[union-attr]
    if isinstance(layer, nn.Linear):
        return w.amax(dim=0)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return w.amax(dim=(0, 2, 3))
    return w.reshape(channels, -1).amax(dim=1)


def _all_users_are(node: fx.Node, readers: set[str]) -> bool:
    """Every value-reading user of `node` (looking through same-grid ops) is one of `readers`."""
    from edgeface.quant_ops import torch_rule

    stack = list(node.users)
    while stack:
        u = stack.pop()
        meta = u.meta.get(INFO_KEY)
        rule = torch_rule(meta.op) if meta is not None else None
        if rule is not None and rule.kind == "shape":
            continue
        if u.name in readers:
            continue
        if rule is not None and rule.kind == "same_grid":
            stack.extend(u.users)
            continue
        return False
    return True


def _absorbing_readers(gm: fx.GraphModule, readers: list[str]) -> list[nn.Module] | None:
    nodes = {n.name: n for n in gm.graph.nodes}
    modules = []
    for r in readers:
        node = nodes.get(r)
        if node is None or node.op != "call_module":
            return None
        modules.append(gm.get_submodule(str(node.target)))
    return modules


def insert_channel_scales(gm: fx.GraphModule, place: Placement) -> list[str]:
    """Structure: a ChannelScale on every quantized edge from a float op into absorbing conv/linear layers.

    Skipped where the producer is an affine LayerNorm read only by those layers (its own weight takes the
    factor). Returns the new module names; the caller re-analyses the graph.
    """
    added: list[str] = []
    for p in place.points:
        if p.readers is None or p.end.op == "placeholder":
            continue
        modules = _absorbing_readers(gm, p.readers)
        shape = info(p.end).shape
        if not modules or shape is None:
            continue
        axes = {_reader_axis(m) % len(shape) for m in modules}
        if len(axes) != 1:
            continue
        axis = axes.pop()
        channels = shape[axis]
        if any(_input_view(m, channels) is None for m in modules):
            continue
        root = p.end
        while root.op in ("call_module", "call_function", "call_method") and _is_same_grid(gm, root):
            root = root.args[0]  # type: ignore[assignment]
        if _ln_params(gm, root) is not None and _all_users_are(root, set(p.readers)):
            continue
        name = "smooth_" + p.end.name
        gm.add_module(name, ChannelScale(channels, axis))
        with gm.graph.inserting_after(p.end):
            node = gm.graph.call_module(name, (p.end,))
        readers = set(p.readers)
        p.end.replace_all_uses_with(
            node, delete_user_cb=lambda u, r=readers, n=node: u is not n and u.name in r
        )
        added.append(name)
    if added:
        gm.graph.lint()
        gm.recompile()
    return added


def _is_same_grid(gm: fx.GraphModule, node: fx.Node) -> bool:
    from edgeface.quant_ops import torch_rule

    rule = torch_rule(op_name(gm, node))
    return (
        rule is not None
        and rule.kind == "same_grid"
        and bool(node.args)
        and isinstance(node.args[0], fx.Node)
    )


def _targets(gm: fx.GraphModule, place: Placement) -> list[tuple[str, list[Tensor | None], list[nn.Module]]]:
    """(name, tensors to divide by s, reader layers) for every migration site of a prepared graph."""
    layers = set(place.layers)
    out: list[tuple[str, list[Tensor | None], list[nn.Module]]] = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), ChannelScale):
            cs = gm.get_submodule(str(node.target))
            readers = [
                u for u in _value_readers(gm, node) if u.op == "call_module" and str(u.target) in layers
            ]
            modules = [gm.get_submodule(str(u.target)) for u in readers]
            if modules and all(_input_view(m, cs.scale.numel()) for m in modules):  # type: ignore[arg-type]
                out.append((str(node.target), [cs.scale], modules))  # type: ignore[list-item]
            continue
        params = _ln_params(gm, node)
        if params is None:
            continue
        readers = _value_readers(gm, node)
        if not readers or any(u.op != "call_module" or str(u.target) not in layers for u in readers):
            continue
        modules = [gm.get_submodule(str(u.target)) for u in readers]
        if all(_input_view(m, params[0].numel()) for m in modules):
            out.append((node.name, [params[0], params[1]], modules))
    return out


def _value_readers(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """Users of `node` that read its values, through same-grid ops; shape-only users are skipped."""
    from edgeface.compress.quant.fakequant import ActQuant
    from edgeface.quant_ops import torch_rule

    found: list[fx.Node] = []
    stack = list(node.users)
    while stack:
        u = stack.pop()
        if u.op == "call_module" and isinstance(gm.get_submodule(str(u.target)), ActQuant):
            stack.extend(u.users)
            continue
        meta = u.meta.get(INFO_KEY)
        rule = torch_rule(meta.op) if meta is not None else None
        if rule is not None and rule.kind == "shape":
            continue
        if rule is not None and rule.kind == "same_grid":
            stack.extend(u.users)
            continue
        found.append(u)
    return found


ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)  # candidate migration strengths, tried per site
SAMPLE_ROWS = 2048  # activation rows kept per site for the local error (Linear readers)
RANGE_SAMPLE = 1 << 14  # values used to pick a clipping range
SAMPLE_IMAGES = 8  # images kept per site (conv readers)


def _reader_out(m: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(x, w, m.bias)
    return m._conv_forward(x, w, m.bias)  # type: ignore[operator]


def _fake_act(x: Tensor, bits: int) -> Tensor:
    """Per-tensor affine fake quantization with the clipping (of [min, max]) that minimises the MSE."""
    qmin, qmax = act_range(bits)
    lo0, hi0 = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    flat = x.reshape(-1)
    probe = flat[:: max(1, flat.numel() // RANGE_SAMPLE)].contiguous()
    best, best_err = (lo0, hi0), float("inf")
    for a in torch.linspace(1.0, 0.3, 12).tolist():
        scale, zp = affine_qparams(lo0 * a, hi0 * a, bits)
        err = float(
            (torch.fake_quantize_per_tensor_affine(probe, scale, zp, qmin, qmax) - probe).square().sum()
        )
        if err < best_err:
            best, best_err = (lo0 * a, hi0 * a), err
    scale, zp = affine_qparams(best[0], best[1], bits)
    return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)


def _local_error(
    x: Tensor, modules: list[nn.Module], s: Tensor | None, act_bits: int, weight_bits: list[int]
) -> float:
    """Relative output error of the reader layers with input and weights quantized, for factors `s`."""
    axis = _reader_axis(modules[0])
    shape = [1] * x.dim()
    shape[axis] = -1
    xs = x if s is None else x / s.reshape(shape)
    xq = _fake_act(xs, act_bits)
    err, ref_power = 0.0, 0.0
    for m, bits in zip(modules, weight_bits, strict=True):
        w = m.weight.detach()  # type: ignore[union-attr]
        ws = w if s is None else w * s.reshape(_input_view(m, s.numel()))  # type: ignore[arg-type]
        wq = fake_quant_weight(ws, weight_scale_maxabs(ws, bits), bits)
        ref = _reader_out(m, x, w)
        err += float((_reader_out(m, xq, wq) - ref).pow(2).sum())
        ref_power += float(ref.pow(2).sum())
    return err / max(ref_power, 1e-12)


def smooth(
    gm: fx.GraphModule,
    place: Placement,
    batches: list[Tensor],
    alpha: float | None = None,
    act_bits: dict[str, int] | None = None,
    weight_bits: dict[str, int] | None = None,
) -> dict[str, float]:
    """Set every migration's factors from calibration data (float graph, before quantizers).

    Per site, each strength in ALPHAS (or just `alpha`) and no migration at all are compared by the
    reader layers' output error with their input and weights quantized (act_bits / weight_bits of the
    plan, 8 by default) on a sample of the calibration activations; the best one is applied. SmoothQuant's
    one global alpha is fragile: a reader with near-zero weight columns gets factors that blow up its
    weight range. Returns {site: alpha chosen} for the sites migrated.
    """
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    jobs = _targets(gm, place)
    if not jobs:
        return {}
    amax: dict[int, Tensor] = {}
    samples: dict[int, Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    hooks = []
    for i, (_, _, modules) in enumerate(jobs):

        def pre(m: nn.Module, inp: tuple[Tensor, ...], i: int = i) -> None:
            x = inp[0].detach()
            flat = x.abs().movedim(_reader_axis(m), -1)
            cur = flat.reshape(-1, flat.shape[-1]).amax(dim=0)
            amax[i] = cur if i not in amax else torch.maximum(amax[i], cur)
            if i in samples:
                return
            if isinstance(m, nn.Linear):
                rows = x.reshape(-1, x.shape[-1])
                pick = torch.randperm(rows.shape[0], generator=gen)[:SAMPLE_ROWS]
                samples[i] = rows[pick].clone()
            else:
                samples[i] = x[:SAMPLE_IMAGES].clone()

        hooks.append(modules[0].register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for x in batches:
                gm(x)
    finally:
        for h in hooks:
            h.remove()
    names = {n.target: n.name for n in gm.graph.nodes if n.op == "call_module"}
    layer_names = {id(m): n for n, m in gm.named_modules()}
    example = example_input(batches[0].shape[1:])
    with torch.no_grad():
        reference = gm(example)
    done: dict[str, float] = {}
    for i, (name, divided, modules) in enumerate(jobs):
        if i not in amax:
            continue
        channels = int(amax[i].numel())
        if any(_input_view(m, channels) is None for m in modules):
            continue
        point = "aq_" + names.get(name, name).replace(".", "_")
        a_bits = (act_bits or {}).get(point, 8)
        w_bits = [(weight_bits or {}).get(layer_names[id(m)], 8) for m in modules]
        w_max = torch.stack([_weight_in_max(m, channels) for m in modules]).amax(dim=0)
        a_max = amax[i].to(w_max.dtype)
        with torch.no_grad():
            best_alpha, best_s = None, None
            best_err = _local_error(samples[i], modules, None, a_bits, w_bits)
            for a in (alpha,) if alpha is not None else ALPHAS:
                s = (a_max.clamp(min=1e-5) ** a) / (w_max.clamp(min=1e-5) ** (1 - a))
                s = torch.where(a_max > 0, s, torch.ones_like(s)).clamp(*SCALE_RANGE)
                err = _local_error(samples[i], modules, s, a_bits, w_bits)
                if err < best_err:
                    best_alpha, best_s, best_err = a, s, err
        if best_s is None:
            continue
        s = best_s
        saved = [None if t is None else t.detach().clone() for t in divided]
        saved_w = [m.weight.detach().clone() for m in modules]
        with torch.no_grad():
            for t in divided:
                if t is not None:
                    if name.startswith("smooth_"):
                        t.mul_(s.reshape(t.shape))  # ChannelScale divides by its buffer
                    else:
                        t.div_(s.reshape(t.shape))
            for m in modules:
                m.weight.mul_(s.reshape(_input_view(m, channels)))  # type: ignore[arg-type]
            out = gm(example)
        if (out - reference).abs().max() > 1e-3 * max(1.0, float(reference.abs().max())):
            with torch.no_grad():  # the channel mapping was not the identity: undo
                for t, old in zip(divided, saved, strict=True):
                    if t is not None and old is not None:
                        t.copy_(old)
                for m, w in zip(modules, saved_w, strict=True):
                    m.weight.copy_(w)
            continue
        done[name] = float(best_alpha)  # type: ignore[arg-type]
    return done
