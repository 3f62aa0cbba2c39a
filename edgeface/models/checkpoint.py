"""edgeface's own checkpoint: weights + spec + the list of structural transforms that made them.

`torch.load(weights_only=True)` cannot unpickle module classes, so a compressed model is stored as data and
rebuilt: build the base architecture, replay each transform's *structure* (a pruning pass changes channel
counts, quantization swaps in fake-quant modules), then load the state_dict strictly. Each transform kind
names the function that replays it; compression code registers its kinds here and nowhere else.

Layout: {"format": CHECKPOINT_FORMAT, "model": "<name or module:factory>", "spec": {...},
         "transforms": [{"kind": "prune", ...}, {"kind": "quant", ...}], "state_dict": {...}}
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeface.errors import EdgefaceError
from edgeface.io import atomic_write
from edgeface.models.loading import CHECKPOINT_FORMAT, load_state_strict
from edgeface.models.registry import build_model, check_spec
from edgeface.spec import ModelSpec, with_defaults

# kind -> "module:function" with signature (model, record, state_dict) -> nn.Module
REBUILDERS: dict[str, str] = {
    "prune": "edgeface.compress.prune:rebuild",
    "quant": "edgeface.compress.quant:rebuild",
}


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: ModelSpec,
    base_model: str,
    transforms: list[dict[str, Any]],
) -> Path:
    """Write atomically: an interrupted run must never leave a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": base_model,
        "spec": spec.to_dict(),
        "transforms": transforms,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def base_model_of(obj: dict[str, Any], requested: str, source: str = "checkpoint") -> str:
    """The architecture to rebuild, decided by the user, never by the file.

    A checkpoint is data: its "model" field is compared with what the user asked for and never imported on
    its own authority. A built-in name is safe to build; a `module:factory` is user code, so it runs only
    when the user typed that same reference after --model. Anything else is refused.
    """
    from edgeface.models.registry import REGISTRY

    recorded = obj.get("model")
    if not isinstance(recorded, str) or not recorded or len(recorded) > 512:
        raise EdgefaceError(f"{source}: corrupt edgeface checkpoint (no valid 'model' field)")
    if recorded == requested:
        return recorded
    if recorded in REGISTRY:
        raise EdgefaceError(
            f"{source} holds a compressed '{recorded}', but --model is '{requested}'; pass --model {recorded}"
        )
    raise EdgefaceError(
        f"{source} was made from the user model '{recorded}'; a checkpoint never chooses the code that "
        f"runs, so pass --model {recorded} yourself if you trust that module"
    )


def _check_layout(obj: dict[str, Any], source: str) -> None:
    if not isinstance(obj.get("state_dict"), dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj["state_dict"].items()
    ):
        raise EdgefaceError(f"{source}: corrupt edgeface checkpoint ('state_dict' is not a dict of tensors)")
    transforms = obj.get("transforms", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise EdgefaceError(f"{source}: corrupt edgeface checkpoint ('transforms' is not a list of records)")
    if not isinstance(obj.get("spec"), dict):
        raise EdgefaceError(f"{source}: corrupt edgeface checkpoint (no spec)")


def restore(
    obj: dict[str, Any],
    requested_model: str,
    spec_override: ModelSpec | dict[str, Any] | None = None,
    source: str = "checkpoint",
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a compressed model; `requested_model` is the user's --model (see base_model_of).

    A `spec_override` dict (a user's `--spec FILE.json`) may leave fields out: they keep the checkpoint's."""
    _check_layout(obj, source)
    try:
        recorded_spec = ModelSpec.from_dict(obj["spec"])
    except EdgefaceError as e:
        raise EdgefaceError(f"{source}: {e}") from None
    model, _ = build_model(base_model_of(obj, requested_model, source), recorded_spec)
    state = obj["state_dict"]
    for record in obj.get("transforms", []):
        kind = record.get("kind")
        # the record picks one of our own rebuilders by name; the table, not the file, holds the code
        ref = REBUILDERS.get(kind) if isinstance(kind, str) else None
        if ref is None:
            raise EdgefaceError(f"{source} uses unknown transform {kind!r}")
        module_name, _, fn = ref.partition(":")
        model = getattr(importlib.import_module(module_name), fn)(model, record, state)
    load_state_strict(model, state, source="checkpoint weights")
    if spec_override is None:
        return model, recorded_spec
    if isinstance(spec_override, dict):
        spec_override = with_defaults({"name": recorded_spec.name, **spec_override}, recorded_spec)[0]
    return model, check_spec(model, spec_override)  # an override must fit the model, as a declared spec
