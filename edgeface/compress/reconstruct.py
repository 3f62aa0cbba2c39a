"""Least-squares reconstruction after a cut: refit the layers that lost input channels so their outputs
match the unpruned model's again.

Removing hidden channels of a block (an inverted-residual expansion, an MLP's hidden width) leaves the
kept hidden activations exactly as they were, but the layer that reads them (the 1x1 projection back to
the residual stream, the MLP's second Linear) now misses the removed channels' contributions. That is a
linear problem with a closed-form answer: given the pruned network's own inputs X to such a layer and the
unpruned network's outputs Y of the same layer on the same faces, the best weights solve the ridge
regression min ||X W - Y||^2 + lambda ||W||^2 (He et al. 2017, "Channel pruning"; ThiNet). Layers are
refit in forward order, each on inputs from the already-refit layers before it, so errors do not pile
up. It needs a few hundred unlabeled faces and forward passes only; distillation then starts far closer.

Only layers whose output is comparable with the teacher's are refit: a Conv2d (any kernel, groups=1) or
Linear that lost input channels and kept all its outputs, under the same name in both models.

Public API:
    reconstruct(student, teacher, images, spec, max_images=256, ridge=1e-3) -> [{layer, before, after}]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeface.spec import ModelSpec


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run (saves the rest)."""


def refit_layers(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the layers reconstruction can refit (see the module docstring), in module order."""
    t_modules = dict(teacher.named_modules())
    names = []
    for name, m in student.named_modules():
        t = t_modules.get(name)
        if isinstance(m, nn.Conv2d) and isinstance(t, nn.Conv2d):
            ok = m.groups == 1 and t.groups == 1 and m.out_channels == t.out_channels
            ok = ok and m.in_channels < t.in_channels
        elif isinstance(m, nn.Linear) and isinstance(t, nn.Linear):
            ok = m.out_features == t.out_features and m.in_features < t.in_features
        else:
            ok = False
        if ok:
            names.append(name)
    return names


def _rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as regression rows: (samples, fan_in), one row per output position."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if layer.padding_mode != "zeros":
        raise NotImplementedError  # refit skips such layers
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*k*k, L
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(layer: nn.Module, y: Tensor) -> Tensor:
    if isinstance(layer, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _capture(model: nn.Module, name: str, x: Tensor, want: str) -> Tensor:
    """Run `model` on `x` until layer `name` has run; its input (want="in") or output ("out")."""
    layer = model.get_submodule(name)
    box: dict[str, Tensor] = {}

    def hook(_m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        box["v"] = (inp[0] if want == "in" else out).detach()
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "v" not in box:
        raise RuntimeError(f"layer {name} did not run")
    return box["v"]


@torch.no_grad()
def reconstruct(
    student: nn.Module,
    teacher: nn.Module,
    images: Sequence[Path],
    spec: ModelSpec,
    max_images: int = 256,
    ridge: float = 1e-3,
    batch_size: int = 32,
    progress: bool = False,
    min_rows_per_weight: int = 16,
) -> list[dict[str, Any]]:
    """Refit every `refit_layers` layer of `student` in place (weights and bias) to reproduce the
    teacher's output of the same layer on `images`; returns the relative error of each layer's output
    before and after. A refit that would not lower the error on these faces is not applied."""
    from tqdm.auto import tqdm

    from edgeface.compress.data import face_loader

    names = refit_layers(student, teacher)
    if not names:
        return []
    was_s, was_t = student.training, teacher.training
    student.eval()
    teacher.eval()
    batches = list(face_loader(images[:max_images], spec, batch_size=batch_size, shuffle=False))
    report = []
    for name in tqdm(names, desc="reconstruct", unit="layer", disable=not progress):
        layer = student.get_submodule(name)
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            continue
        bias = layer.bias is not None
        fan_in = layer.weight[0].numel()
        xtx = torch.zeros(fan_in + bias, fan_in + bias, dtype=torch.float64)
        xty = torch.zeros(fan_in + bias, layer.weight.shape[0], dtype=torch.float64)
        err_before = norm = 0.0
        samples_seen = 0
        for x in batches:
            xin = _capture(student, name, x, "in")
            rows = _rows(layer, xin).double()
            target = _targets(layer, _capture(teacher, name, x, "out")).double()
            err_before += float((_targets(layer, layer(xin)).double() - target).pow(2).sum())
            norm += float(target.pow(2).sum())
            if bias:
                rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
            xtx += rows.T @ rows
            xty += rows.T @ target
            samples_seen += len(rows)
        if samples_seen < min_rows_per_weight * len(xtx):
            # too few positions for this many weights (a 1x1 head on a pooled map): a fit would memorise
            # these faces, not generalise; leave the layer to distillation
            report.append({"layer": name, "applied": False, "reason": "too few samples"})
            continue
        scale = float(xtx.diagonal().mean()) or 1.0
        w_ = torch.linalg.solve(xtx + ridge * scale * torch.eye(len(xtx), dtype=xtx.dtype), xty)
        # ||X W - Y||^2 from the normal equations: no need to keep the samples
        err_after = float((w_ * (xtx @ w_)).sum() - 2 * (w_ * xty).sum()) + norm
        solution = w_
        entry = {"layer": name, "before": (err_before / norm) ** 0.5, "after": (err_after / norm) ** 0.5}
        if err_after < err_before:
            w = solution[:fan_in].T.reshape(layer.weight.shape).to(layer.weight.dtype)
            layer.weight.copy_(w)
            if bias:
                layer.bias.copy_(solution[fan_in].to(layer.bias.dtype))
            entry["applied"] = True
        else:
            entry["applied"] = False
        report.append(entry)
    student.train(was_s)
    teacher.train(was_t)
    return report
