"""Which channel groups of a model can be removed safely, and why the others stay whole.

Torch-Pruning (DepGraph) traces autograd to find the channels that must go together, and prunes every
module and parameter it knows. It cannot rewrite Python: sizes the forward computes from the input and
then uses are fixed in code. After pruning,

* `x.chunk(2, dim=1)` or `torch.split(x, sizes)` still cuts at the old sizes (or in equal halves while
  the convs behind it lost different numbers of channels),
* `qkv.reshape(B, N, 3, heads, -1)` regroups pruned channels into q, k and v by position, so they mix,
* `unbind`, `expand` and slices with literal bounds keep their old extents,
* a parameter that only looks channel-shaped (an attention `temperature` of shape (heads, 1, 1)) is cut
  along the wrong axis.

Those are the IndexError on EdgeFace-XS and, worse, models that run and are silently wrong. So a group is
pruned only when every op its channels pass through has a known channel mapping: convs, linears (also
channels-last, on any number of leading dims), norms over the channel axis, PReLU, element-wise ops,
concatenation, channel-wise (1-D) parameters such as layer-scale `gamma`, and reshapes that keep the
channel axis whole or flatten it channel-major into a Linear (checked on the traced shapes). Any other
group stays whole and is reported with the op and the nearest layer, so the user sees what was kept and
why instead of a traceback.

Public API:
    analyse(model, example, protected) -> Analysis
        (the dependency graph, every group with its root layer, channel count, whether it is coupled
        through a residual add, and the reason it must stay whole, if any)
    channel_parameters(model) -> [(parameter, dim)]   bare nn.Parameters Torch-Pruning should resize
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_WRAPPED = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose2d,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.PReLU,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.LSTM,
)


@dataclass
class GroupInfo:
    root: str  # the layer whose output channels define the group
    module: nn.Module
    channels: int
    residual: bool  # coupled through an add of two or more producers (a residual stream)
    blocker: str | None = None  # why the group must stay whole; None when it can be pruned
    members: list[nn.Module] = field(default_factory=list)  # every layer whose outputs it prunes


@dataclass
class Analysis:
    groups: list[GroupInfo]
    unwrapped: list[tuple[nn.Parameter, int]]
    graph: Any = None  # the Torch-Pruning DependencyGraph, reusable for pruning this same model

    @property
    def prunable(self) -> list[GroupInfo]:
        return [g for g in self.groups if g.blocker is None]

    @property
    def blocked(self) -> list[GroupInfo]:
        return [g for g in self.groups if g.blocker is not None]


def channel_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Bare parameters (not owned by a layer Torch-Pruning knows) and the axis it should cut.

    The axis is the last one larger than 1, as Torch-Pruning would guess; passing it explicitly keeps its
    warning away from users. Whether cutting there is right is decided per group (`_parameter_ok`).
    """
    owned = {id(p) for m in model.modules() if isinstance(m, _WRAPPED) for p in m.parameters(recurse=False)}
    out = []
    for _name, p in model.named_parameters():
        if id(p) in owned:
            continue
        dims = [i for i, s in enumerate(p.shape) if s > 1]
        if dims:
            out.append((p, dims[-1]))
    return out


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def reshape_keeps_channels(src: Sequence[int], dst: Sequence[int], channels: int) -> bool:
    """True when a reshape from `src` to `dst` moves a `channels`-wide axis without cutting it.

    Either the axis survives whole, with only the dims before and after it merged or split
    ((B, C, H, W) -> (B, C, H*W), (B, H, W, C) -> (B*H*W, C), squeeze), or it is flattened channel-major
    into the last axis ((B, C, 7, 7) -> (B, C*49), which Torch-Pruning maps channel c to a block of 49).
    Splitting it ((B, N, 3C) -> (B, N, 3, heads, C/heads)) is not a channel mapping Torch-Pruning knows.
    """
    for a, b in ((src, dst), (dst, src)):
        for k, size in enumerate(a):
            if size != channels:
                continue
            before = _prod(a[:k])
            for j, other in enumerate(b):
                if _prod(b[:j]) != before:
                    continue
                if other == channels:
                    return True
                if j == len(b) - 1 and other == channels * _prod(a[k + 1 :]):
                    return True
    return False


def _nearest_layer(node: Any, names: dict[int, str]) -> str:
    """A readable place for an op node: the closest named module upstream (else downstream)."""
    for direction in ("inputs", "outputs"):
        seen, frontier = set(), [node]
        while frontier:
            nxt = []
            for n in frontier:
                for m in getattr(n, direction):
                    if id(m) in seen:
                        continue
                    seen.add(id(m))
                    name = names.get(id(m.module))
                    if name:
                        return f"{'after' if direction == 'inputs' else 'before'} {name}"
                    nxt.append(m)
            frontier = nxt[:64]
    return "in the model's forward"


def _op_name(node: Any) -> str:
    fn = getattr(node, "grad_fn", None)
    name = fn.name() if fn is not None and hasattr(fn, "name") else type(node.module).__name__
    return name.replace("Backward0", "").replace("Backward1", "").lower()


def _reshape_shapes(dg: Any, output: Any) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shape of every traced reshape/view, read by one backward pass through the graph
    Torch-Pruning traced (autograd keeps neither shape where both can be read otherwise)."""
    from torch_pruning import ops

    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for node in dg.module2node.values():
        fn = getattr(node, "grad_fn", None)
        if node.type != ops.OPTYPE.RESHAPE or fn is None:
            continue

        def hook(grad_in, grad_out, key=id(node), fn=fn):
            src = grad_in[0].shape if grad_in and grad_in[0] is not None else None
            if src is None and hasattr(fn, "_saved_self_sym_sizes"):
                src = fn._saved_self_sym_sizes
            if src is not None and grad_out and grad_out[0] is not None:
                shapes[key] = (tuple(int(s) for s in src), tuple(int(s) for s in grad_out[0].shape))

        handles.append(fn.register_hook(hook))
    outs = [o for o in (output if isinstance(output, (list, tuple)) else [output]) if torch.is_tensor(o)]
    try:
        torch.autograd.backward(
            [o for o in outs if o.requires_grad],
            [torch.ones_like(o) for o in outs if o.requires_grad],
            retain_graph=True,
        )
    finally:
        for h in handles:
            h.remove()
    return shapes


def analyse(model: nn.Module, example: torch.Tensor, protected: Sequence[nn.Module] = ()) -> Analysis:
    """Trace `model` once and classify every prunable channel group (see the module docstring)."""
    import torch_pruning as tp
    from torch_pruning import ops

    unwrapped = channel_parameters(model)
    fixed_sizes = (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND, ops.OPTYPE.SLICE)
    kept: list[Any] = []

    def forward(m: nn.Module, x: torch.Tensor) -> Any:
        out = m(x)
        kept.append(out)
        return out

    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning's guesses are replaced by the checks below
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, forward_fn=forward, unwrapped_parameters=unwrapped
        )
    shapes = _reshape_shapes(dg, kept[0])
    model.zero_grad(set_to_none=True)
    model.train(was_training)

    names = {id(m): n for n, m in model.named_modules() if n}
    names.update({id(p): n for n, p in model.named_parameters()})
    unwrapped_dims = {id(p): d for p, d in unwrapped}
    ignored = [m for layer in protected for m in layer.modules()]
    groups: list[GroupInfo] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        all_groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    for group in all_groups:
        root = group[0].dep.target.module
        channels = dg.get_out_channels(root)
        blockers: list[tuple[int, str]] = []  # (priority, reason): the op that breaks it before a symptom
        members: list[nn.Module] = []
        producers = 0
        adds = 0
        for dep, idxs in group:
            node, target = dep.target, dep.target.module
            n = len({int(i) for i in idxs})
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(target, (nn.Conv2d, nn.Linear)):
                members.append(target)
                producers += not (isinstance(target, nn.Conv2d) and target.groups == target.in_channels > 1)
            kind = node.type
            if kind in (ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.OUTPUT) and _op_name(node) in ("add", "sub"):
                adds += len(node.inputs) > 1
            where = _nearest_layer(node, names) if kind in (*fixed_sizes, ops.OPTYPE.RESHAPE) else ""
            if kind in fixed_sizes:
                op = _op_name(node)
                blockers.append((0, f"its channels go through {op} ({where}), sizes fixed in forward code"))
            elif kind == ops.OPTYPE.RESHAPE:
                s = shapes.get(id(node))
                # after a channel-major flatten Torch-Pruning's indices count flattened positions
                # (512 channels x 49 = 25088 on IResNet's fc), so the root's own width is checked too
                if s is None or not (
                    reshape_keeps_channels(s[0], s[1], n)
                    or (channels and reshape_keeps_channels(s[0], s[1], int(channels)))
                ):
                    shape = f" {list(s[0])} -> {list(s[1])}" if s else ""
                    blockers.append((1, f"a reshape{shape} ({where}) splits its {n} channels"))
            elif kind == ops.OPTYPE.PARAMETER:
                dim = unwrapped_dims.get(id(target))
                if dim is None or target.shape[dim] != n:
                    pname = names.get(id(target), "?")
                    blockers.append(
                        (2, f"parameter {pname} {list(target.shape)} is not one value per channel of its {n}")
                    )
            elif kind == ops.OPTYPE.LN and len(getattr(target, "normalized_shape", ())) > 1:
                pname = names.get(id(target), "?")
                blockers.append((2, f"LayerNorm {pname} normalises over more than the channel axis"))
        blocker = min(blockers, key=lambda b: b[0])[1] if blockers else None
        groups.append(
            GroupInfo(
                root=names.get(id(root), type(root).__name__),
                module=root,
                channels=int(channels or 0),
                residual=producers > 1 or adds > 0,
                blocker=blocker,
                members=members,
            )
        )
    for node in dg.module2node.values():  # tracing is done: free the autograd graph it held (activations)
        node.grad_fn = None
    return Analysis(groups=groups, unwrapped=unwrapped, graph=dg)
