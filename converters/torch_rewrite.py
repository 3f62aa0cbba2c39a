"""Module-level rewrites applied before litert-torch conversion, exact in float, chosen for int8 speed.

litert-torch lowers `nn.PReLU` to RELU/MUL/SUB chains; XNNPACK has no int8 PRELU, so in an int8 graph those
become several elementwise passes and delegate partition breaks around every activation. PReLU(x) =
max(x, a*x) holds exactly for every slope a <= 1 (negative ones included: x > 0 gives a x <= x, x < 0 gives
a x >= x); written as a 1x1 depthwise conv (the slopes become per-channel int8 weights) and a MAXIMUM.
XNNPACK runs the conv; it delegates MAXIMUM only in float, so the int8 MAXIMUM runs as LiteRT's own kernel
between two delegate partitions, and still int8 iresnet18 ran 3.91x faster than fp32 on a CPU with VNNI
(1.1x on the development machine without it since 2026-12: docs/speed.md).
This is the TFLite counterpart of `onnx_float.prelu_as_max` and `equalize.py`, done on the module:

- slopes above 1: min(x, a x) is PReLU there, and -max(-x, a (-x)) = min(x, a x). When the PReLU reads a
  Conv2d or BatchNorm2d that nothing else reads and only Conv2d/BatchNorm2d layers read its output (found by
  tracing the module with torch.fx), those channels are negated in the producer and again in the readers
  (`_scale_channels`), so the one max form holds for the whole layer.
- the same layers are range-equalized on calibration images (equalize.py says why): channel c is scaled by
  d_c > 0 in the producer and by 1 / d_c in the readers.
- any other layer (tracing fails, or its neighbourhood is not that simple) keeps an exact form chosen by its
  slopes alone: max(x, a*x) when they all lie in [0, 1], else a*x + (1 - a)*relu(x).
In the int8 graph x, a*x and the MAXIMUM's output share one grid covering x's and the output's range
(tflite.activation_targets), as in ONNX (qdq.prelu_ranges).
(a*x + relu((1-a)*x) stays in one partition but its int8 ADD makes it slower: benchmarks/prelu_tflite.py.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _max_prelu(prelu: Any) -> Any:
    import torch
    from torch import nn

    class MaxPReLU(nn.Module):
        """max(x, slope_c * x), the slope as a bias-free 1x1 depthwise conv."""

        def __init__(self, slopes: torch.Tensor) -> None:
            super().__init__()
            c = slopes.numel()
            self.slope = nn.Conv2d(c, c, 1, groups=c, bias=False)
            self.slope.weight.data.copy_(slopes.detach().reshape(c, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.maximum(x, self.slope(x))

    return MaxPReLU(prelu.weight)


def _any_slope_prelu(prelu: Any) -> Any:
    import torch
    from torch import nn

    class AffineReluPReLU(nn.Module):
        """a*x + (1 - a)*relu(x), exact for every slope: two bias-free 1x1 depthwise convs, a RELU and an
        ADD, all of which XNNPACK runs in int8 in one partition."""

        def __init__(self, slopes: torch.Tensor) -> None:
            super().__init__()
            c = slopes.numel()
            self.slope = nn.Conv2d(c, c, 1, groups=c, bias=False)
            self.rest = nn.Conv2d(c, c, 1, groups=c, bias=False)
            self.slope.weight.data.copy_(slopes.detach().reshape(c, 1, 1, 1))
            self.rest.weight.data.copy_(1.0 - slopes.detach().reshape(c, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.slope(x) + self.rest(torch.relu(x))

    return AffineReluPReLU(prelu.weight)


@dataclass
class _Site:
    """A PReLU whose channels can be negated and rescaled: module names of it, its producer, its readers."""

    prelu: str
    producer: str
    readers: list[str]


@dataclass
class PReLURewrite:
    """What prelu_as_max did: PReLU layers rewritten, of them in the max form, negated or equalized."""

    rewritten: int = 0
    max_form: int = 0
    flipped: list[str] = field(default_factory=list)  # layers with channels negated (slopes above 1)
    equalized: list[str] = field(default_factory=list)


def _is_conv(m: Any) -> bool:
    """A plain Conv2d, or the float twin of an `edgeface quantize` layer (its weight rounding switched off:
    a checkpoint exports its float twin, converters/learned.py)."""
    from torch import nn

    from edgeface.compress.quant.fakequant import QuantConv2d

    return type(m) is nn.Conv2d or (type(m) is QuantConv2d and not m.quant_enabled)


def _passes_through(m: Any) -> bool:
    """A module that returns its input: nn.Identity, or a checkpoint twin's switched-off quantizer."""
    from torch import nn

    from edgeface.compress.quant.fakequant import ActQuant

    return type(m) is nn.Identity or (type(m) is ActQuant and not m.enabled)


def _is_bn(m: Any) -> bool:
    from torch import nn

    return (
        type(m) is nn.BatchNorm2d
        and m.affine
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
    )


def _sites(net: Any) -> list[_Site]:
    """The per-channel PReLUs of `net` whose channels can be rescaled, exactly: input from a Conv2d or
    BatchNorm2d read by nothing else, output read only by Conv2d/BatchNorm2d layers as their one input, each
    module called once and owning its parameters; modules that pass a tensor through (_passes_through) may
    sit between them. Nothing when the module does not trace."""
    from torch import fx, nn

    try:  # a checkpoint's twin keeps its own graph: retracing would inline its quantized layers
        graph = net.graph if isinstance(net, fx.GraphModule) else fx.symbolic_trace(net).graph
    except Exception:  # noqa: BLE001 - any model code fx cannot follow: every layer keeps its exact form
        return []
    modules = dict(net.named_modules(remove_duplicate=False))
    calls: dict[int, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[id(modules[node.target])] = calls.get(id(modules[node.target]), 0) + 1
    owners: dict[int, int] = {}
    for _, m in net.named_modules(remove_duplicate=False):
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            owners[id(t)] = owners.get(id(t), 0) + 1

    def single(node: Any, c: int, *, reader: bool) -> bool:
        """`node` calls a Conv2d/BatchNorm2d once, on one tensor, with c channels on the PReLU's side."""
        if not isinstance(node, fx.Node) or node.op != "call_module" or node.kwargs or len(node.args) != 1:
            return False
        m = modules[node.target]
        if calls[id(m)] != 1 or any(
            owners[id(t)] != 1 for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        ):
            return False
        if _is_bn(m):
            return m.num_features == c
        return _is_conv(m) and (m.in_channels if reader else m.out_channels) == c

    def through(node: Any) -> bool:
        return (
            node.op == "call_module"
            and _passes_through(modules[node.target])
            and len(node.args) == 1
            and not node.kwargs
        )

    def source(node: Any) -> Any:
        """The node whose value `node` passes on unchanged (itself unless it passes through)."""
        while isinstance(node, fx.Node) and through(node) and len(node.users) == 1:
            node = node.args[0]
        return node

    def reads(node: Any) -> list[tuple[Any, Any]]:
        """(reader, the node it reads) of `node`'s value, past modules that pass it through."""
        out = []
        for u in node.users:
            out.extend(reads(u) if through(u) else [(u, node)])
        return out

    found = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.PReLU):
            continue
        prelu = modules[node.target]
        c = prelu.weight.numel()
        if c < 2 or calls[id(prelu)] != 1 or node.kwargs or len(node.args) != 1:
            continue
        producer, readers = source(node.args[0]), reads(node)
        if (
            single(producer, c, reader=False)
            and reads(producer) == [(node, node.args[0])]
            and readers
            and all(single(r, c, reader=True) and r.args[0] is src for r, src in readers)
        ):
            found.append(_Site(node.target, producer.target, [r.target for r, _ in readers]))
    return found


def _scale_channels(net: Any, site: _Site, s: np.ndarray) -> None:
    """Channel c of the PReLU's input (and so of its output, for s_c > 0 or a negated max form) times s_c in
    the producer, and the readers' view of it divided by s_c: the network's function is unchanged."""
    import torch
    from edgeface.converters.equalize import column_factors

    def mul(t: Any, f: np.ndarray) -> None:
        t.data.copy_((t.data.double() * torch.from_numpy(f)).to(t.dtype))

    c = s.size
    p = net.get_submodule(site.producer)
    if _is_conv(p):
        mul(p.weight, s.reshape(c, *([1] * (p.weight.dim() - 1))))
    else:
        mul(p.weight, s)
    if p.bias is not None:
        mul(p.bias, s)
    for name in site.readers:
        r = net.get_submodule(name)
        if _is_bn(r):  # BN(y) = (y - m) / sd * w + b = (s y - s m) / sd * (w / s) + b
            mul(r.running_mean, s)
            mul(r.weight, 1.0 / s)
            continue
        mul(r.weight, column_factors(1.0 / s, tuple(r.weight.shape), r.groups))


def _reader_weights(net: Any, site: _Site) -> list[tuple[np.ndarray, int]]:
    """(weight [O, C/g, ...], groups) of each reader, as equalize.prelu_scales takes them. A BatchNorm2d
    reader is a per-channel multiply whose constant shares one int8 scale across channels, so it counts as
    a dense conv reading every channel with |w / sd|."""
    import torch

    out = []
    for name in site.readers:
        r = net.get_submodule(name)
        if _is_bn(r):
            k = (r.weight / torch.sqrt(r.running_var + r.eps)).detach().double().numpy()
            out.append((k.reshape(1, -1, 1, 1), 1))
        else:
            out.append((r.weight.detach().double().numpy(), r.groups))
    return out


def _channel_ranges(net: Any, sites: list[_Site], batches: Iterable[np.ndarray]) -> dict[str, list[Any]]:
    """Per-channel [min, max] of each site's PReLU input and output over the calibration batches (NCHW)."""
    import torch

    stats: dict[str, list[Any]] = {}

    def hook(name: str) -> Any:
        def record(_m: Any, args: tuple[Any, ...], y: Any) -> None:
            for k, t in enumerate((args[0], y)):
                v = t.detach().double().transpose(0, 1).reshape(t.shape[1], -1)
                lo, hi = v.min(dim=1).values.numpy(), v.max(dim=1).values.numpy()
                s = stats.setdefault(name, [None, None, None, None])
                s[2 * k] = lo if s[2 * k] is None else np.minimum(s[2 * k], lo)
                s[2 * k + 1] = hi if s[2 * k + 1] is None else np.maximum(s[2 * k + 1], hi)

        return record

    handles = [net.get_submodule(s.prelu).register_forward_hook(hook(s.prelu)) for s in sites]
    try:
        with torch.no_grad():
            for batch in batches:
                net(torch.as_tensor(np.ascontiguousarray(batch, np.float32)))
    finally:
        for h in handles:
            h.remove()
    return stats


def prelu_as_max(
    net: Any, calib: Iterable[np.ndarray] | None = None, flip: bool = True, alpha: float = 0.5
) -> tuple[Any, PReLURewrite]:
    """(copy of `net` with every per-channel PReLU rewritten, what was done); `net` is not modified.

    With `flip`, the layers `_sites` finds get the max form whatever their slopes, their channels with slope
    above 1 negated around them; with `calib` (NCHW float batches) as well, their channels are equalized on
    those images (equalize.prelu_scales, `alpha` for dense readers). Without `flip` every layer keeps the
    form its slopes allow. A checkpoint's float twin is flipped but not equalized here: `edgeface quantize`
    equalized it before it learned its grids (equalize_prelus).
    Single-slope PReLUs are left alone.
    """
    from torch import nn

    out = copy.deepcopy(net).eval()
    sites = {s.prelu: s for s in _sites(out)} if flip else {}
    report = PReLURewrite()
    with_max = set()
    for name, s in sites.items():
        slopes = out.get_submodule(name).weight.detach().double().numpy().reshape(-1)
        if (slopes > 1).any():
            _scale_channels(out, s, np.where(slopes > 1, -1.0, 1.0))
            report.flipped.append(name)
        with_max.add(name)
    for parent_name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.PReLU) or child.weight.numel() < 2:
                continue
            qual = f"{parent_name}.{child_name}" if parent_name else child_name
            w = child.weight.detach()
            exact_max = qual in with_max or (float(w.min()) >= 0.0 and float(w.max()) <= 1.0)
            setattr(module, child_name, _max_prelu(child) if exact_max else _any_slope_prelu(child))
            report.rewritten += 1
            report.max_form += int(exact_max)
    if calib is not None and sites:
        report.equalized = _equalize(out, list(sites.values()), calib, alpha)
    return out, report


def equalize_prelus(net: Any, calib: Iterable[Any], alpha: float = 0.5) -> list[str]:
    """Range-equalize, in place, the PReLU layers `_sites` finds in `net` (PReLU modules kept: scaling a
    channel by d_c > 0 commutes with any slope), on calibration batches (NCHW); their names.

    `edgeface quantize` runs it before it learns any grid, so a checkpoint's per-tensor grids are those
    of the even channels the exporters would otherwise make themselves (equalize.py says why)."""
    return _equalize(net, _sites(net), calib, alpha)


def _equalize(net: Any, sites: list[_Site], calib: Iterable[Any], alpha: float) -> list[str]:
    from edgeface.converters.equalize import prelu_scales

    if not sites:
        return []
    stats = _channel_ranges(net, sites, calib)
    done = []
    for s in sites:
        if s.prelu not in stats:  # not reached by the forward pass
            continue
        lo_x, hi_x, lo_y, hi_y = stats[s.prelu]
        d = prelu_scales((lo_x, lo_y), (hi_x, hi_y), _reader_weights(net, s), alpha)
        _scale_channels(net, s, d)
        done.append(s.prelu)
    return done
