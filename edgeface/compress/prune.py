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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

IMPORTANCES = ("l1", "l2", "bn", "taylor")
_RESHAPEABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU)


@dataclass
class PruneResult:
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    protected: list[str]
    record: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

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
            "history": self.history,
        }


def _example(spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    h, w = spec.input_size
    return torch.randn(batch, 3, h, w)


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
) -> PruneResult:
    """Prune `model` in place to keep (1 - ratio) of the filters of each prunable group (per layer), or
    (1 - ratio) of all prunable filters ranked together (`global_pruning`), in `steps` equal increments.

    With `grad_images` (the fine-tune data), BatchNorm statistics are re-estimated after every increment
    (`recalibrate_bn`). `after_step(k, model)` runs after each increment: the iterative schedule
    fine-tunes there, so the next increment ranks filters of a network that has recovered from the last
    cut. Taylor importance needs `grad_images` and a `teacher` (see `_taylor_gradients`).
    """
    import torch_pruning as tp
    from tqdm.auto import tqdm

    if not 0.0 < ratio < 1.0:
        raise EdgefaceError(f"pruning ratio must be in (0, 1), got {ratio}")
    if steps < 1:
        raise EdgefaceError(f"--steps must be >= 1, got {steps}")
    imp = _importance(importance)
    if importance == "taylor" and (not grad_images or teacher is None):
        raise EdgefaceError("Taylor importance needs training images (--data) to compute gradients")
    embedding_dim = _embedding_dim(model, spec)
    macs0, params0 = count_macs_params(model, spec)
    names, ignored = resolve_protected(model, spec, protect, protect_defaults)
    pruner = tp.pruner.BasePruner(
        model.eval(),
        _example(spec),
        importance=imp,
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=ignored,
    )
    history: list[dict[str, Any]] = []
    for k in tqdm(range(steps), desc="prune", unit="step", disable=not progress or steps == 1):
        if importance == "taylor":
            assert teacher is not None and grad_images is not None
            _taylor_gradients(model, teacher, grad_images, spec)
        pruner.step()
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
        "protected": names,
        "layers": layer_shapes(model),
    }
    return PruneResult(macs0, macs1, params0, params1, names, record, history)


def _embedding_dim(model: nn.Module, spec: ModelSpec) -> int:
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(_example(spec, batch=2))
    model.train(was_training)
    return int(out.shape[-1])


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The size-defining hyper-parameters of every layer pruning can change, as JSON-able data."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            shapes[name] = {"type": type(m).__name__, "features": m.num_features}
        elif isinstance(m, nn.PReLU):
            shapes[name] = {"type": "PReLU", "parameters": m.num_parameters}
    return shapes


def _shapes_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Derive the layer sizes from the weights alone (for records written without a 'layers' table).

    A conv weight is (out, in / groups, kh, kw): a depthwise conv (groups == in) stays depthwise with the
    same channel multiplier; any other conv keeps its number of groups.
    """
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        w = state.get(f"{name}.weight")
        if isinstance(m, nn.Conv2d) and w is not None:
            out = int(w.shape[0])
            if m.groups == m.in_channels and m.groups > 1:
                mult = m.out_channels // m.in_channels
                shapes[name] = {"type": "Conv2d", "in": out // mult, "out": out, "groups": out // mult}
            else:
                shapes[name] = {
                    "type": "Conv2d",
                    "in": int(w.shape[1]) * m.groups,
                    "out": out,
                    "groups": m.groups,
                }
        elif isinstance(m, nn.Linear) and w is not None:
            shapes[name] = {"type": "Linear", "in": int(w.shape[1]), "out": int(w.shape[0])}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            ref = w if w is not None else state.get(f"{name}.running_mean")
            if ref is not None:
                shapes[name] = {"type": type(m).__name__, "features": int(ref.shape[0])}
        elif isinstance(m, nn.PReLU) and w is not None:
            shapes[name] = {"type": "PReLU", "parameters": int(w.numel())}
    return shapes


_SIZE_KEYS = {"Conv2d": ("in", "out", "groups"), "Linear": ("in", "out"), "PReLU": ("parameters",)}


def _check_sizes(name: str, m: nn.Module, s: dict[str, Any]) -> None:
    """Sizes read from a file are data to validate: positive integers no larger than the base layer's, so a
    crafted record can neither grow a layer to exhaust memory nor build an inconsistent one."""
    keys = _SIZE_KEYS.get(type(m).__name__, ("features",))
    limits = {
        "in": getattr(m, "in_channels", getattr(m, "in_features", 0)),
        "out": getattr(m, "out_channels", getattr(m, "out_features", 0)),
        "groups": getattr(m, "in_channels", 0),
        "parameters": getattr(m, "num_parameters", 0),
        "features": getattr(m, "num_features", 0),
    }
    for key in keys:
        v = s.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= limits[key]:
            raise EdgefaceError(
                f"pruned checkpoint: layer '{name}' has {key}={v!r}; "
                f"expected an integer in [1, {limits[key]}]"
            )
    if "groups" in keys and (s["in"] % s["groups"] or s["out"] % s["groups"]):
        raise EdgefaceError(
            f"pruned checkpoint: layer '{name}' has {s['groups']} groups for {s['in']} inputs"
        )


def _resized(m: nn.Module, s: dict[str, Any]) -> nn.Module | None:
    """A fresh layer like `m` at the recorded size, or None when the size is unchanged."""
    if isinstance(m, nn.Conv2d):
        if (m.in_channels, m.out_channels, m.groups) == (s["in"], s["out"], s["groups"]):
            return None
        return nn.Conv2d(
            s["in"],
            s["out"],
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            s["groups"],
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    if isinstance(m, nn.Linear):
        if (m.in_features, m.out_features) == (s["in"], s["out"]):
            return None
        return nn.Linear(s["in"], s["out"], bias=m.bias is not None)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.num_features == s["features"]:
            return None
        new = type(m)(s["features"], m.eps, m.momentum, m.affine, m.track_running_stats)
        if m.affine:
            new.weight.requires_grad_(m.weight.requires_grad)
            new.bias.requires_grad_(m.bias.requires_grad)
        return new
    if isinstance(m, nn.PReLU):
        if m.num_parameters == s["parameters"]:
            return None
        return nn.PReLU(s["parameters"])
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
    for name, s in shapes.items():
        m = modules.get(name) if isinstance(name, str) else None
        if m is None or not isinstance(s, dict):
            raise EdgefaceError(f"pruned checkpoint names layer {name!r}, which the base model does not have")
        if type(m).__name__ != s.get("type", type(m).__name__) or not isinstance(m, _RESHAPEABLE):
            raise EdgefaceError(
                f"pruned checkpoint: layer '{name}' is {type(m).__name__}, record says {s.get('type')}"
            )
        _check_sizes(name, m, s)
        new = _resized(m, s)
        if new is not None:
            _set_module(model, name, new)
    return model
