"""Structured filter pruning with Torch-Pruning (DepGraph), and its replay when a checkpoint is loaded.

Removing whole filters gives a physically smaller dense network that every runtime (ONNX, TFLite, a Pi's
XNNPACK) runs faster without sparse kernels. The hard part is consistency: a residual add ties the output
channels of every block in a stage, a depthwise conv ties its input and output channels, and a per-channel
PReLU or BatchNorm follows its conv. Torch-Pruning's dependency graph groups all coupled channels, so one
decision removes the same channels everywhere; we supply importance, protection and the schedule.

Public API:
    prune_model(model, spec, ratio, importance="l2", global_pruning=False, steps=1, protect=(),
                protect_defaults=True, grad_images=None, teacher=None, after_step=None, progress=True)
        -> PruneResult (params/MACs before and after, protected layers, the transform record)
    count_macs_params(model, spec) -> (macs, params)
    layer_shapes(model) -> {name: shape record} of every Conv2d/Linear/BatchNorm/PReLU
    rebuild(model, record, state_dict) -> nn.Module   (REBUILDERS["prune"]; replays the new shapes)

The checkpoint record is pure data ({"kind": "prune", "layers": {name: {...}}, ...}), so a pruned model
reloads with torch.load(weights_only=True): the base architecture is built, every listed layer is
re-created at its pruned size, then the state_dict loads strictly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

IMPORTANCES = ("l1", "l2", "bn", "taylor")


@dataclass
class PruneResult:
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    protected: list[str]
    record: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    left_whole: list[dict[str, str]] = field(default_factory=list)

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_reduction": round(self.macs_reduction, 4),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_reduction": round(self.params_reduction, 4),
            "protected": self.protected,
            "left_whole": self.left_whole,
            "history": self.history,
        }


def _example(spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    h, w = spec.input_size
    return torch.randn(batch, spec.channels, h, w)


def count_macs_params(model: nn.Module, spec: ModelSpec) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass and the parameter count (Torch-Pruning's counter)."""
    import torch_pruning as tp

    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model.eval(), _example(spec))
    model.train(was_training)
    return int(macs), int(params)


def _call_order(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Names of Conv/Linear layers in the order the forward pass runs them (module order can lie)."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(_example(spec))
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def resolve_protected(
    model: nn.Module, spec: ModelSpec, protect: Sequence[str] = (), defaults: bool = True
) -> tuple[list[str], list[nn.Module]]:
    """The stem (first layer run) and the embedding head (last layer run) plus user-named modules.

    The stem sees raw pixels with only three input channels, so its few filters are cheap and each carries
    much; the head defines the embedding, whose size is part of the model's contract (spec.embedding_dim,
    galleries enrolled on device). A user name protects that module and everything inside it.
    """
    modules = dict(model.named_modules())
    names: list[str] = []
    if defaults:
        order = _call_order(model, spec)
        if not order:
            raise EdgefaceError("model has no Conv2d/Linear layer to prune")
        names += [order[0], order[-1]]
    for name in protect:
        if name not in modules or name == "":
            close = [n for n in modules if n and name in n][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EdgefaceError(f"--protect {name}: no such module in the model{hint}")
        names.append(name)
    names = list(dict.fromkeys(names))
    layers: list[nn.Module] = []
    for name in names:
        layers += [m for m in modules[name].modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names, layers


def _importance(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn":
        return tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.importance.TaylorImportance()
    raise EdgefaceError(f"unknown importance '{kind}'; choose one of {', '.join(IMPORTANCES)}")


def _taylor_gradients(
    model: nn.Module, teacher: nn.Module, images: Sequence[Path], spec: ModelSpec, batches: int = 4
) -> None:
    """Accumulate label-free gradients for Taylor importance.

    A face model has no label loss at hand, and a student identical to its teacher has zero distillation
    loss and zero gradient. So the objective is cross-view consistency: the student's embedding of one
    augmented view against the teacher's embedding of another view of the same face (cosine KD). Its
    gradient says how much each filter matters for producing a stable identity embedding.
    """
    from edgeface.compress.data import augment, face_loader
    from edgeface.compress.distill import cosine_kd_loss

    gen = torch.Generator().manual_seed(0)
    model.zero_grad(set_to_none=True)
    model.eval()  # BN statistics stay as they are; gradients still flow
    teacher.eval()
    loader = face_loader(images, spec, batch_size=32, shuffle=True, seed=0, drop_last=False)
    for i, x in enumerate(loader):
        if i >= batches:
            break
        with torch.no_grad():
            t = teacher(augment(x, gen))
        cosine_kd_loss(model(augment(x, gen)), t).backward()


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, images: Sequence[Path], spec: ModelSpec, max_images: int = 512, batch_size: int = 64
) -> None:
    """Re-estimate every BatchNorm's running statistics on real faces after a cut.

    Removing input channels shifts the distribution every following BN normalises; with stale statistics a
    freshly pruned MobileFaceNet keeps ~0.05 cosine similarity to its teacher, with re-estimated ones ~0.5
    to ~0.7 (measured on the LFW compression split), so fine-tuning starts from a far better point. Cheap:
    forward passes only, no gradients.
    """
    from edgeface.compress.data import face_loader

    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all calibration batches
    was_training = model.training
    model.train()
    loader = face_loader(images[:max_images], spec, batch_size=batch_size, shuffle=False, drop_last=False)
    for x in loader:
        model(x)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)


SCOPES = ("all", "inner")


def step_ratio(ratio: float, steps: int, k: int) -> float:
    """Fraction of the *current* channels step k (0-based) removes so that after step k a fraction
    ratio * (k + 1) / steps of the original channels is gone (equal increments of the original)."""
    before, after = ratio * k / steps, ratio * (k + 1) / steps
    return 1.0 - (1.0 - after) / (1.0 - before)


@dataclass
class GroupPlan:
    """What pruning may touch, by name, so one trace serves every copy of the same architecture."""

    protected: list[str]  # stem, head and --protect modules
    roots: list[str]  # the layer that defines each group to prune (its output channels)
    left_whole: list[dict[str, str]]  # [{layer, reason}] for groups kept by necessity or --scope
    unwrapped: list[tuple[str, int]]  # bare parameters Torch-Pruning resizes, with the axis
    graph: Any = field(default=None, repr=False, compare=False)  # the traced graph of `graph_of`
    graph_of: int | None = field(default=None, repr=False, compare=False)  # id() of that model

    def clone(self, model: nn.Module) -> tuple[nn.Module, GroupPlan]:
        """A deep copy of `model` (the model this plan traced) with this plan bound to the copy: budget
        probes prune copies without tracing again."""
        import copy
        from dataclasses import replace

        if self.graph is None or self.graph_of != id(model):
            return copy.deepcopy(model), replace(self, graph=None, graph_of=None)
        import types

        # Torch-Pruning's pruner singletons (importance criteria recognise them by identity) and Python
        # modules are shared, not copied; modules, parameters and graph nodes are copied together
        g = self.graph
        keep = [v for v in vars(g).values() if isinstance(v, types.ModuleType)]
        keep += [*g.REGISTERED_PRUNERS.values(), *g.CUSTOMIZED_PRUNERS.values()]
        m, graph = copy.deepcopy((model, g), memo={id(v): v for v in keep})
        return m, replace(self, graph=graph, graph_of=id(m))

    def graph_for(self, model: nn.Module, spec: ModelSpec) -> Any:
        """The dependency graph of `model`: the analysis's own when it is the same model, else traced."""
        if self.graph is not None and self.graph_of == id(model):
            return self.graph
        import torch_pruning as tp

        params = dict(model.named_parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model.eval(),
                example_inputs=_example(spec),
                unwrapped_parameters=[(params[n], d) for n, d in self.unwrapped],
            )


def plan_groups(
    model: nn.Module,
    spec: ModelSpec,
    protect: Sequence[str] = (),
    protect_defaults: bool = True,
    scope: str = "all",
) -> GroupPlan:
    """Decide what pruning may touch.

    The stem, the embedding head and `protect` are left whole by choice; groups whose channels pass through
    shape arithmetic Torch-Pruning cannot rewrite are left whole by necessity (`prune_groups`), and each is
    reported with the reason. `scope="inner"` also keeps every residual stream at its width and prunes only
    channels private to one block (expansion/bottleneck widths).
    """
    from edgeface.compress.prune_groups import analyse
    from edgeface.errors import ModelError

    if scope not in SCOPES:
        raise EdgefaceError(f"unknown pruning scope '{scope}'; choose one of {', '.join(SCOPES)}")
    names, protected_layers = resolve_protected(model, spec, protect, protect_defaults)
    try:
        analysis = analyse(model, _example(spec, batch=2), protected_layers)
    except Exception as e:  # a graph Torch-Pruning cannot trace: say so in one line
        raise ModelError(
            f"Torch-Pruning cannot trace the model ({type(e).__name__}: {e}); structured pruning "
            "is not available for it"
        ) from e
    left: list[dict[str, str]] = []
    roots: list[str] = []
    module_names = {id(m): n for n, m in model.named_modules()}
    for g in analysis.groups:
        if g.blocker is not None:
            left.append({"layer": g.root, "reason": g.blocker})
        elif scope == "inner" and g.residual:
            left.append({"layer": g.root, "reason": "residual stream (--scope inner)"})
        else:
            roots.append(module_names[id(g.module)])
    if not roots:
        first = left[0] if left else {"layer": names[0] if names else "?", "reason": "protected"}
        raise ModelError(
            f"nothing to prune: every channel group is protected or unsafe; e.g. layer '{first['layer']}': "
            f"{first['reason']}"
        )
    param_names = {id(p): n for n, p in model.named_parameters()}
    return GroupPlan(
        protected=names,
        roots=roots,
        left_whole=left,
        unwrapped=[(param_names[id(p)], d) for p, d in analysis.unwrapped],
        graph=analysis.graph,
        graph_of=id(model),
    )


def prune_model(
    model: nn.Module,
    spec: ModelSpec,
    ratio: float,
    importance: str = "l2",
    global_pruning: bool = False,
    steps: int = 1,
    protect: Sequence[str] = (),
    protect_defaults: bool = True,
    grad_images: Sequence[Path] | None = None,
    teacher: nn.Module | None = None,
    after_step: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
    round_to: int = 1,
    scope: str = "all",
    start_step: int = 0,
    reference: tuple[int, int] | None = None,
    plan: GroupPlan | None = None,
) -> PruneResult:
    """Prune `model` in place to keep (1 - ratio) of the filters of each prunable group (per layer), or
    (1 - ratio) of all prunable filters ranked together (`global_pruning`), in `steps` equal increments.

    Every step ranks channels afresh on the current network (a new Torch-Pruning pruner), so the schedule
    can stop and resume between steps: `start_step` k continues a model already pruned through step k
    (`reference`: MACs and parameters of the original model, for the report). `round_to` keeps every pruned
    group's width a multiple of it (int8 kernels pack channels in 4s, 8s or 16s). With `grad_images` (the
    fine-tune data), BatchNorm statistics are re-estimated after every increment (`recalibrate_bn`).
    `after_step(k, model)` runs after each increment: the iterative schedule fine-tunes there, so the next
    increment ranks filters of a network that has recovered from the last cut. Taylor importance needs
    `grad_images` and a `teacher` (see `_taylor_gradients`). `plan` (from `plan_groups` on the same
    architecture) skips tracing it again; `protect`/`protect_defaults`/`scope` are then ignored.
    """
    from tqdm.auto import tqdm

    if not 0.0 < ratio < 1.0:
        raise EdgefaceError(f"pruning ratio must be in (0, 1), got {ratio}")
    if steps < 1 or not 0 <= start_step <= steps:
        raise EdgefaceError(f"--steps must be >= 1, got {steps}")
    if round_to < 1:
        raise EdgefaceError(f"--round-to must be >= 1, got {round_to}")
    imp = _importance(importance)
    if importance == "taylor" and (not grad_images or teacher is None):
        raise EdgefaceError("Taylor importance needs training images (--data) to compute gradients")
    embedding_dim = _embedding_dim(model, spec)
    macs0, params0 = reference if reference is not None else count_macs_params(model, spec)
    plan = plan or plan_groups(model, spec, protect, protect_defaults, scope)
    dg = plan.graph_for(model, spec)
    history: list[dict[str, Any]] = []
    todo = range(start_step, steps)
    for k in tqdm(todo, desc="prune", unit="step", disable=not progress or len(todo) <= 1):
        if importance == "taylor":
            assert teacher is not None and grad_images is not None
            _taylor_gradients(model, teacher, grad_images, spec)
        _prune_step(model, spec, dg, plan.roots, imp, step_ratio(ratio, steps, k), global_pruning, round_to)
        model.zero_grad(set_to_none=True)
        if grad_images:
            recalibrate_bn(model, grad_images, spec)
        macs, params = count_macs_params(model, spec)
        history.append({"step": k + 1, "macs": macs, "params": params})
        if after_step is not None:
            after_step(k, model)
    if _embedding_dim(model, spec) != embedding_dim:  # protection failed: never ship a different contract
        raise EdgefaceError(
            f"pruning changed the embedding size from {embedding_dim}; protect the head layer"
        )
    macs1, params1 = count_macs_params(model, spec)
    record = {
        "kind": "prune",
        "ratio": ratio,
        "importance": importance,
        "global": global_pruning,
        "steps": steps,
        "round_to": round_to,
        "scope": scope,
        "protected": plan.protected,
        "left_whole": plan.left_whole,
        "layers": layer_shapes(model),
    }
    return PruneResult(macs0, macs1, params0, params1, plan.protected, record, history, plan.left_whole)


def _channel_groups(dg: Any, group: Any) -> int:
    """Channels of a grouped conv or GroupNorm are removed alike in every group (depthwise: not grouped)."""
    n = 1
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Module) or (isinstance(m, nn.Conv2d) and m.groups == m.out_channels):
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is not None:
            n = max(n, pruner.get_out_channel_groups(m), pruner.get_in_channel_groups(m))
    return n


def _keep(count: int, wanted: int, groups: int, round_to: int) -> int:
    """Channels to keep per channel group: `wanted` rounded to the nearest count that makes the layer width
    (count per group x groups) a multiple of `round_to`, never below one such multiple, never above `count`
    (a layer whose original width is not a multiple then stays whole rather than grow).

    Nearest, not down: rounding down would remove up to `round_to - 1` extra channels from every group, so
    a small ratio would cut far more than asked on narrow layers."""
    import math

    unit = round_to // math.gcd(round_to, groups)
    keep = max(unit, int(math.floor(wanted / unit + 0.5)) * unit)
    return min(count, keep)


@torch.no_grad()
def _prune_step(
    model: nn.Module,
    spec: ModelSpec,
    dg: Any,
    roots: Sequence[str],
    importance: Any,
    ratio: float,
    global_pruning: bool,
    round_to: int,
) -> None:
    """Remove `ratio` of the current channels of every group rooted at `roots` (per group, or ranked
    together with `global_pruning`), widths rounded to `round_to`.

    Written on Torch-Pruning's dependency graph and importance criteria rather than its BasePruner: one
    trace serves the group analysis and every step, and rounding keeps at least `round_to` channels where
    the pruner's own rounding can remove a small layer entirely.
    """
    modules = dict(model.named_modules())
    ranked = []
    for name in roots:
        root = modules[name]
        fn = dg.get_pruner_of_module(root).prune_out_channels
        group = dg.get_pruning_group(root, fn, list(range(dg.get_out_channels(root))))
        imp = importance(group)
        if imp is None:
            continue
        groups = _channel_groups(dg, group)
        ranked.append((name, root, fn, groups, imp.view(groups, -1).mean(0).cpu()))
    if not ranked:
        return
    threshold = None
    if global_pruning:
        scores = torch.cat([r[-1] for r in ranked])
        n_drop = len(scores) - int(len(scores) * (1.0 - ratio))
        if n_drop > 0:
            threshold = torch.kthvalue(scores, n_drop).values
    for name, root, fn, groups, imp in ranked:
        count = len(imp)
        if global_pruning:
            wanted = count - int((imp <= threshold).sum()) if threshold is not None else count
        else:
            wanted = int(count * (1.0 - ratio))
        keep = _keep(count, wanted, groups, round_to)
        if keep >= count:
            continue
        drop = torch.argsort(imp)[: count - keep]
        idxs = torch.cat([drop + g * count for g in range(groups)]).tolist()
        dg.get_pruning_group(root, fn, idxs).prune()
        _check_forward(model, spec, name)


def _check_forward(model: nn.Module, spec: ModelSpec, name: str) -> None:
    """Run the model after each group is cut, so a failure names the layer that caused it."""
    from edgeface.errors import ModelError

    try:
        with torch.no_grad():
            model.eval()(_example(spec))
    except Exception as e:
        raise ModelError(
            f"pruning the channels of layer '{name}' broke the model's forward pass ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); leave it whole with --protect {name}"
        ) from e


def _embedding_dim(model: nn.Module, spec: ModelSpec) -> int:
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(_example(spec, batch=2))
    model.train(was_training)
    return int(out.shape[-1])


def _kind(m: nn.Module) -> str | None:
    """The record's type name of a layer pruning can resize (subclasses count as their base class)."""
    for cls in (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU, nn.LayerNorm):
        if isinstance(m, cls):
            return cls.__name__
    return None


def _bare_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters not owned by a resizable layer (layer-scale `gamma`, ...), by their full name."""
    from edgeface.compress.prune_groups import channel_parameters

    bare = {id(p) for p, _ in channel_parameters(model)}
    return {n: p for n, p in model.named_parameters() if id(p) in bare}


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The size-defining hyper-parameters of every layer pruning can change, as JSON-able data."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind == "Conv2d":
            shapes[name] = {"type": kind, "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif kind == "Linear":
            shapes[name] = {"type": kind, "in": m.in_features, "out": m.out_features}
        elif kind in ("BatchNorm1d", "BatchNorm2d"):
            shapes[name] = {"type": kind, "features": m.num_features}
        elif kind == "PReLU":
            shapes[name] = {"type": kind, "parameters": m.num_parameters}
        elif kind == "LayerNorm":
            shapes[name] = {"type": kind, "shape": [int(d) for d in m.normalized_shape]}
    for name, p in _bare_parameters(model).items():
        shapes[name] = {"type": "Parameter", "shape": [int(d) for d in p.shape]}
    return shapes


def _shapes_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Derive the layer sizes from the weights alone (for records written without a 'layers' table).

    A conv weight is (out, in / groups, kh, kw): a depthwise conv (groups == in) stays depthwise with the
    same channel multiplier; any other conv keeps its number of groups.
    """
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        w = state.get(f"{name}.weight")
        kind = _kind(m)
        if kind == "Conv2d" and w is not None:
            out = int(w.shape[0])
            if m.groups == m.in_channels and m.groups > 1:
                mult = m.out_channels // m.in_channels
                shapes[name] = {"type": kind, "in": out // mult, "out": out, "groups": out // mult}
            else:
                shapes[name] = {
                    "type": kind,
                    "in": int(w.shape[1]) * m.groups,
                    "out": out,
                    "groups": m.groups,
                }
        elif kind == "Linear" and w is not None:
            shapes[name] = {"type": kind, "in": int(w.shape[1]), "out": int(w.shape[0])}
        elif kind in ("BatchNorm1d", "BatchNorm2d"):
            ref = w if w is not None else state.get(f"{name}.running_mean")
            if ref is not None:
                shapes[name] = {"type": kind, "features": int(ref.shape[0])}
        elif kind == "PReLU" and w is not None:
            shapes[name] = {"type": kind, "parameters": int(w.numel())}
        elif kind == "LayerNorm" and w is not None and w.dim() == len(m.normalized_shape):
            shapes[name] = {"type": kind, "shape": [int(d) for d in w.shape]}
    for name in _bare_parameters(model):
        if isinstance(state.get(name), torch.Tensor):
            shapes[name] = {"type": "Parameter", "shape": [int(d) for d in state[name].shape]}
    return shapes


_SIZE_KEYS = {
    "Conv2d": ("in", "out", "groups"),
    "Linear": ("in", "out"),
    "PReLU": ("parameters",),
    "BatchNorm1d": ("features",),
    "BatchNorm2d": ("features",),
}


def _bad(name: str, key: str, v: Any, limit: int) -> EdgefaceError:
    return EdgefaceError(
        f"pruned checkpoint: layer '{name}' has {key}={v!r}; expected an integer in [1, {limit}]"
    )


def _is_size(v: Any, limit: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit


def _check_shape(name: str, s: dict[str, Any], base: Sequence[int]) -> list[int]:
    shape = s.get("shape")
    if not isinstance(shape, list) or len(shape) != len(base):
        raise EdgefaceError(f"pruned checkpoint: '{name}' has shape {shape!r}; expected {len(base)} sizes")
    for v, limit in zip(shape, base, strict=True):
        if not _is_size(v, int(limit)):
            raise _bad(name, "shape", shape, int(limit))
    return shape


def _check_sizes(name: str, m: nn.Module, s: dict[str, Any]) -> None:
    """Sizes read from a file are data to validate: positive integers no larger than the base layer's, so a
    crafted record can neither grow a layer to exhaust memory nor build an inconsistent one."""
    kind = _kind(m)
    if kind == "LayerNorm":
        _check_shape(name, s, m.normalized_shape)
        return
    limits = {
        "in": getattr(m, "in_channels", getattr(m, "in_features", 0)),
        "out": getattr(m, "out_channels", getattr(m, "out_features", 0)),
        "groups": getattr(m, "in_channels", 0),
        "parameters": getattr(m, "num_parameters", 0),
        "features": getattr(m, "num_features", 0),
    }
    keys = _SIZE_KEYS[kind or ""]
    for key in keys:
        if not _is_size(s.get(key), limits[key]):
            raise _bad(name, key, s.get(key), limits[key])
    if "groups" in keys and (s["in"] % s["groups"] or s["out"] % s["groups"]):
        raise EdgefaceError(
            f"pruned checkpoint: layer '{name}' has {s['groups']} groups for {s['in']} inputs"
        )


def _param_like(p: nn.Parameter | None, shape: Sequence[int]) -> nn.Parameter | None:
    if p is None:
        return None
    return nn.Parameter(torch.empty(*shape, dtype=p.dtype), requires_grad=p.requires_grad)


def _resized(m: nn.Module, s: dict[str, Any]) -> nn.Module | None:
    """A copy of `m` at the recorded size (subclass, flags and hooks kept), or None when unchanged."""
    import copy

    kind = _kind(m)
    if kind == "Conv2d":
        if (m.in_channels, m.out_channels, m.groups) == (s["in"], s["out"], s["groups"]):
            return None
        new = copy.deepcopy(m)
        new.in_channels, new.out_channels, new.groups = s["in"], s["out"], s["groups"]
        new.weight = _param_like(m.weight, (s["out"], s["in"] // s["groups"], *m.kernel_size))
        new.bias = _param_like(m.bias, (s["out"],))
        return new
    if kind == "Linear":
        if (m.in_features, m.out_features) == (s["in"], s["out"]):
            return None
        new = copy.deepcopy(m)
        new.in_features, new.out_features = s["in"], s["out"]
        new.weight = _param_like(m.weight, (s["out"], s["in"]))
        new.bias = _param_like(m.bias, (s["out"],))
        return new
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        if m.num_features == s["features"]:
            return None
        new = copy.deepcopy(m)
        new.num_features = n = s["features"]
        new.weight, new.bias = _param_like(m.weight, (n,)), _param_like(m.bias, (n,))
        if m.running_mean is not None:
            new.running_mean, new.running_var = torch.zeros(n), torch.ones(n)
        return new
    if kind == "PReLU":
        if m.num_parameters == s["parameters"]:
            return None
        new = copy.deepcopy(m)
        new.num_parameters = s["parameters"]
        new.weight = _param_like(m.weight, (s["parameters"],))
        return new
    if kind == "LayerNorm":
        shape = tuple(s["shape"])
        if tuple(m.normalized_shape) == shape:
            return None
        new = copy.deepcopy(m)
        new.normalized_shape = shape
        new.weight, new.bias = _param_like(m.weight, shape), _param_like(m.bias, shape)
        return new
    return None


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def rebuild(model: nn.Module, record: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Replay a prune record on a freshly built base model: re-create every layer at its pruned size.

    Uses the record's 'layers' table when present (it survives later transforms that rename weights, such
    as quantization wrappers) and otherwise derives sizes from `state_dict`. Weights are loaded afterwards
    by the caller, strictly.
    """
    shapes = record.get("layers") or _shapes_from_state(model, state_dict)
    if not isinstance(shapes, dict):
        raise EdgefaceError("pruned checkpoint: corrupt 'layers' record")
    modules = dict(model.named_modules())
    params = _bare_parameters(model)
    for name, s in shapes.items():
        if not isinstance(name, str) or not isinstance(s, dict):
            raise EdgefaceError(f"pruned checkpoint: corrupt entry for layer {name!r}")
        if s.get("type") == "Parameter":
            base = params.get(name)
            if base is None:
                raise EdgefaceError(f"pruned checkpoint names parameter {name!r}, which the base model lacks")
            shape = _check_shape(name, s, base.shape)
            if list(base.shape) != shape:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, _param_like(base, shape))
            continue
        m = modules.get(name)
        if m is None:
            raise EdgefaceError(f"pruned checkpoint names layer {name!r}, which the base model does not have")
        if _kind(m) is None or _kind(m) != s.get("type", _kind(m)):
            raise EdgefaceError(
                f"pruned checkpoint: layer '{name}' is {type(m).__name__}, record says {s.get('type')}"
            )
        _check_sizes(name, m, s)
        new = _resized(m, s)
        if new is not None:
            _set_module(model, name, new)
    return model
