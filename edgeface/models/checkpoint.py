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
from edgeface.models.registry import build_model
from edgeface.spec import ModelSpec

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


def restore(obj: dict[str, Any], spec_override: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec]:
    model, _ = build_model(obj["model"])
    state = obj["state_dict"]
    for record in obj.get("transforms", []):
        ref = REBUILDERS.get(record.get("kind", ""))
        if ref is None:
            raise EdgefaceError(f"checkpoint uses unknown transform '{record.get('kind')}'")
        module_name, _, fn = ref.partition(":")
        model = getattr(importlib.import_module(module_name), fn)(model, record, state)
    load_state_strict(model, state, source="checkpoint weights")
    spec = spec_override or ModelSpec.from_dict(obj["spec"])
    return model, spec
