"""Checkpoint loading: one entry point (`load_model`) used by every command that takes --model/--weights.

Checkpoints load with `torch.load(weights_only=True)`: a checkpoint is data, never code. We accept a bare
state_dict, the usual wrappers ({'state_dict': ...}, {'model': ...}, {'net_state_dict': ...}), the
'module.' prefix DataParallel/DDP adds, a training wrapper's prefix ('model.', 'backbone.' beside a
margin head) when exactly one prefix fits, checkpoints without BatchNorm's num_batches_tracked, and
edgeface's own compressed checkpoints, which carry their spec and enough structure (pruned channel
counts, quantization recipe) to rebuild the compressed model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeface import quiet
from edgeface.errors import EdgefaceError
from edgeface.models.registry import build_model, defaulted_note
from edgeface.spec import ModelSpec, read_declared_spec

CHECKPOINT_FORMAT = "edgeface.checkpoint/1"
_WRAPPER_KEYS = ("state_dict", "model", "net_state_dict", "model_state_dict", "backbone")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    checkpoint: dict[str, Any] | None = None  # the edgeface checkpoint, when the weights were one


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EdgefaceError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if str(e).startswith("Weights only load failed"):
            # torch's first line goes on to offer weights_only=False, which edgeface never uses (a pickled
            # object can run code on load): say what the file is and what to save instead
            raise EdgefaceError(
                f"cannot load weights {path}: it holds pickled Python objects (e.g. a whole model saved "
                "with torch.save(model)), which edgeface does not unpickle; save the weights with "
                "torch.save(model.state_dict(), PATH)"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgefaceError(f"cannot load weights {path}: {first}") from None


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside the common checkpoint wrappers and drop DDP's 'module.' prefix."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        raise EdgefaceError(
            "weights file holds no state_dict (expected a dict of tensors or a known wrapper)"
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


# buffers that hold no learned value: checkpoints of older PyTorch versions and converted ones (MXNet,
# Caffe, TF ports) lack them, and torch's own BatchNorm loading fills them in
UNLEARNED_BUFFERS = ("num_batches_tracked",)


def _unlearned(key: str) -> bool:
    return key.rpartition(".")[2] in UNLEARNED_BUFFERS


def fit_prefix(state: dict[str, torch.Tensor], own: Any) -> dict[str, torch.Tensor]:
    """The part of `state` under the one key prefix that makes it the model's key set, prefix removed.

    Training checkpoints nest the face network under an attribute of the training wrapper: Lightning's
    `model.`, a recognition trainer's `backbone.` beside its margin head's `head.kernel`. When the keys
    do not fit as they are and exactly one prefix (one or two dotted parts) gives exactly the model's keys,
    that part is taken; otherwise `state` is returned unchanged and the strict load names the mismatch.
    """
    wanted = {k for k in own if not _unlearned(k)}

    def fits(keys: set[str]) -> bool:
        return wanted <= keys and all(k in own for k in keys)

    if fits(set(state)):
        return state
    prefixes = {".".join(k.split(".")[:n]) + "." for k in state for n in (1, 2) if k.count(".") >= n}
    found = [p for p in prefixes if fits({k[len(p) :] for k in state if k.startswith(p)})]
    if len(found) != 1:
        return state
    return {k[len(found[0]) :]: v for k, v in state.items() if k.startswith(found[0])}


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """load_state_dict(strict=True) with an error that names the first mismatches, not a wall of keys."""
    own = model.state_dict()
    state = {**{k: v for k, v in own.items() if _unlearned(k) and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(
            f"missing keys {missing[:3]}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:3]}"
            + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        )
    if shape:
        problems.append(
            f"shape mismatch {shape[:2]}" + (f" (+{len(shape) - 2} more)" if len(shape) > 2 else "")
        )
    if problems:
        raise EdgefaceError(f"{source} do not fit the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def is_edgeface_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def load_model(
    model: str, weights: str | os.PathLike[str] | None = None, spec_file: str | os.PathLike[str] | None = None
) -> LoadedModel:
    """Build `model` and load `weights`; the returned model is in eval mode."""
    declared = read_declared_spec(spec_file) if spec_file else None
    obj = read_checkpoint(weights) if weights else None
    with _naming(spec_file):
        if is_edgeface_checkpoint(obj):
            from edgeface.models.checkpoint import restore

            # the fields --spec leaves out keep the checkpoint's
            net, spec = restore(obj, model, declared, source=f"checkpoint {weights}")
            return LoadedModel(net.eval(), spec, obj)
        net, spec = build_model(model, declared)
    quiet.note(defaulted_note(spec.provenance.get("spec_defaults") or [], spec))
    if obj is not None:
        state = fit_prefix(unwrap_state_dict(obj), net.state_dict())
        load_state_strict(net, state, source=f"weights {weights}")
        spec = spec.replace(provenance={**spec.provenance, "weights": Path(weights).name})  # type: ignore[arg-type]
    return LoadedModel(net.eval(), spec, None)


@contextmanager
def _naming(spec_file: str | os.PathLike[str] | None) -> Iterator[None]:
    """An invalid field of a `--spec FILE.json` is reported with the file's name."""
    try:
        yield
    except EdgefaceError as e:
        if spec_file and str(e).startswith("invalid model spec"):
            raise type(e)(f"{spec_file}: {e}") from None
        raise
