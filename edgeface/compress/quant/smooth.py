"""Outlier channels after LayerNorm: migrate them into the next layers' weights (SmoothQuant-style).

In a CNN-transformer hybrid a LayerNorm's output, which feeds int8 Linear layers, has a few channels tens
of times larger than the rest (its affine weight makes them so), and one per-tensor int8 grid sized for
those leaves the other channels with a handful of levels. When every reader of the LayerNorm is a
conv/linear quantized per output channel, the float function does not change if channel c of the
LayerNorm's affine weight and bias is divided by s_c and input channel c of each reader's weight is
multiplied by s_c. Values change, not structure, so a checkpoint rebuilds without replaying this.

The factors are chosen per LayerNorm by measurement, not by one global alpha: SmoothQuant's
s = a^alpha / w^(1 - alpha) for several alphas, "caps" that only shrink the channels above 1/k of the
largest, and no migration at all are compared by the reader layers' output error with input and weights
quantized, on a sample of the calibration activations (the grid spans all calibration data). One global
alpha was fragile on EdgeFace-XS (0.3 collapsed the embedding, 0.7 was best of the fixed ones, per-site
choice better still: docs/compression.md). The same migration on GELU outputs (an explicit float
per-channel scale before the int8 Linear) was measured too and dropped: it bought +0.0005 of mean cosine
and cost 0.03 of the worst face's, because it removes the headroom small channels had for faces unlike the
calibration set. Every migration is checked on an example input and undone if the model's float output
moved, so a channel mapping broken by a permute or reshape can never change the function.
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
from edgeface.compress.quant.graph import INFO_KEY
from edgeface.compress.quant.prepare import Placement, example_input

SCALE_RANGE = (1e-2, 1e2)
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)  # candidate migration strengths, tried per site
SAMPLE_ROWS = 4096  # activation rows kept per site for the local error (Linear readers), from all batches
CLIP_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # of the full-data range, for the local error's int grid
RANGE_SAMPLE = 1 << 14  # values used to pick a clipping range
SAMPLE_IMAGES = 8  # images kept per site (conv readers)
CAPS = (2.0, 4.0, 8.0, 16.0)  # outlier caps: channels above max/k are scaled down to it


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


def _targets(gm: fx.GraphModule, place: Placement) -> list[tuple[str, list[Tensor | None], list[nn.Module]]]:
    """(name, tensors to divide by s, reader layers) for every migration site of a prepared graph."""
    layers = set(place.layers)
    out: list[tuple[str, list[Tensor | None], list[nn.Module]]] = []
    for node in gm.graph.nodes:
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


def _reader_out(m: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(x, w, m.bias)
    return m._conv_forward(x, w, m.bias)  # type: ignore[operator]


def _fake_act(x: Tensor, bits: int, lo0: float, hi0: float) -> Tensor:
    """Per-tensor affine fake quantization over [lo0, hi0] (all calibration data), clipped by the factor
    that minimises the squared error on the sample `x`."""
    qmin, qmax = act_range(bits)
    flat = x.reshape(-1)
    probe = flat[:: max(1, flat.numel() // RANGE_SAMPLE)].contiguous()
    best, best_err = (lo0, hi0), float("inf")
    for a in CLIP_FACTORS:
        scale, zp = affine_qparams(lo0 * a, hi0 * a, bits)
        err = float(
            (torch.fake_quantize_per_tensor_affine(probe, scale, zp, qmin, qmax) - probe).square().sum()
        )
        if err < best_err:
            best, best_err = (lo0 * a, hi0 * a), err
    scale, zp = affine_qparams(best[0], best[1], bits)
    return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)


def _local_error(
    x: Tensor,
    modules: list[nn.Module],
    s: Tensor | None,
    act_bits: int,
    weight_bits: list[int],
    cmin: Tensor,
    cmax: Tensor,
) -> float:
    """Relative output error of the reader layers with input and weights quantized, for factors `s`.

    The activation range is that of all calibration data (per-channel min / max divided by `s`), so
    rare outliers outside the sample still set the grid, as they will in calibration.
    """
    axis = _reader_axis(modules[0])
    shape = [1] * x.dim()
    shape[axis] = -1
    ones = torch.ones_like(cmin)
    div = ones if s is None else s
    xs = x / div.reshape(shape)
    lo, hi = min(float((cmin / div).min()), 0.0), max(float((cmax / div).max()), 0.0)
    xq = _fake_act(xs, act_bits, lo, hi)
    err, ref_power = 0.0, 0.0
    for m, bits in zip(modules, weight_bits, strict=True):
        w = m.weight.detach()  # type: ignore[union-attr]
        ws = w if s is None else w * s.reshape(_input_view(m, s.numel()))  # type: ignore[arg-type]
        wq = fake_quant_weight(ws, weight_scale_maxabs(ws, bits), bits)
        ref = _reader_out(m, x, w)
        err += float((_reader_out(m, xq, wq) - ref).pow(2).sum())
        ref_power += float(ref.pow(2).sum())
    return err / max(ref_power, 1e-12)


def _candidates(a_max: Tensor, w_max: Tensor, alpha: float | None) -> list[tuple[float, Tensor]]:
    """(label, factors) to try at one site.

    "alpha": SmoothQuant's s = a^alpha / w^(1 - alpha) (may enlarge small channels);
    "cap": s = max(1, a / (max a / k)): only channels above 1/k of the largest are scaled down to it, the
    others keep their values (and their headroom for faces unlike the calibration set). The label is
    alpha, or -k for a cap.
    """
    out: list[tuple[float, Tensor]] = []
    for a in (alpha,) if alpha is not None else ALPHAS:
        s = (a_max.clamp(min=1e-5) ** a) / (w_max.clamp(min=1e-5) ** (1 - a))
        out.append((a, torch.where(a_max > 0, s, torch.ones_like(s)).clamp(*SCALE_RANGE)))
    if alpha is None:
        top = float(a_max.max())
        for k in CAPS:
            if top > 0:
                out.append((-k, (a_max / (top / k)).clamp(min=1.0, max=SCALE_RANGE[1])))
    return out


def smooth(
    gm: fx.GraphModule,
    place: Placement,
    batches: list[Tensor],
    alpha: float | None = None,
    act_bits: dict[str, int] | None = None,
    weight_bits: dict[str, int] | None = None,
) -> dict[str, float]:
    """Migrate every LayerNorm read only by int8 conv/linear layers (float graph, before quantizers).

    Per LayerNorm, the candidates of `_candidates` (or just SmoothQuant with `alpha`) and no migration are
    compared by the reader layers' output error with their input and weights quantized (act_bits /
    weight_bits of the plan, 8 by default) on a sample of the calibration activations; the best one is
    applied. Returns {LayerNorm node: label chosen (alpha, or -k for a cap)} for the ones migrated.
    """
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    jobs = _targets(gm, place)
    if not jobs:
        return {}
    cmin: dict[int, Tensor] = {}
    cmax: dict[int, Tensor] = {}
    samples: dict[int, list[Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    per_batch = -(-SAMPLE_ROWS // len(batches))
    hooks = []
    for i, (_, _, modules) in enumerate(jobs):

        def pre(m: nn.Module, inp: tuple[Tensor, ...], i: int = i) -> None:
            x = inp[0].detach()
            rows = x.movedim(_reader_axis(m), -1)
            rows = rows.reshape(-1, rows.shape[-1])
            lo, hi = rows.amin(dim=0), rows.amax(dim=0)
            cmin[i] = lo if i not in cmin else torch.minimum(cmin[i], lo)
            cmax[i] = hi if i not in cmax else torch.maximum(cmax[i], hi)
            if isinstance(m, nn.Linear):  # rows from every batch
                pick = torch.randperm(rows.shape[0], generator=gen)[:per_batch]
                samples.setdefault(i, []).append(x.reshape(-1, x.shape[-1])[pick].clone())
            elif i not in samples:
                samples[i] = [x[:SAMPLE_IMAGES].clone()]

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
        if i not in cmax:
            continue
        amax = torch.maximum(cmax[i].abs(), cmin[i].abs())
        sample = torch.cat(samples[i])
        channels = int(amax.numel())
        if any(_input_view(m, channels) is None for m in modules):
            continue
        point = "aq_" + names.get(name, name).replace(".", "_")
        a_bits = (act_bits or {}).get(point, 8)
        w_bits = [(weight_bits or {}).get(layer_names[id(m)], 8) for m in modules]
        w_max = torch.stack([_weight_in_max(m, channels) for m in modules]).amax(dim=0)
        a_max = amax.to(w_max.dtype)
        with torch.no_grad():
            best_alpha, best_s = None, None
            best_err = _local_error(sample, modules, None, a_bits, w_bits, cmin[i], cmax[i])
            for a, s in _candidates(a_max, w_max, alpha):
                err = _local_error(sample, modules, s, a_bits, w_bits, cmin[i], cmax[i])
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
