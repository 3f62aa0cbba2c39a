"""What is evaluated: an exported artifact (run through edgeface.runtime, no torch) or a PyTorch model.

An argument ending in .onnx or .tflite is an artifact: it is measured exactly as the device runs it, and
torch is never imported for it. Anything else is a PyTorch model reference (a built-in name or
`package.module:factory`, with optional weights); `compare` spells a model with weights `NAME@WEIGHTS`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.io import printable

ARTIFACT_SUFFIXES = (".onnx", ".tflite")
Embedder = Any  # Callable[[Sequence[Path]], np.ndarray], as edgeface.eval.embed.Embedder


def is_artifact(ref: str | os.PathLike[str]) -> bool:
    return Path(ref).suffix.lower() in ARTIFACT_SUFFIXES


@dataclass
class EvalModel:
    """`net` has the runtime Artifact's face interface: `spec`, `embed(aligned faces, flip)`, `path`,
    `num_threads`, `backend`; the on-device Pipeline takes it as it is."""

    label: str  # how reports name it
    kind: str  # "artifact" | "pytorch"
    net: Any
    file: Path | None  # the artifact, or the PyTorch weights
    size_bytes: int | None

    @property
    def spec(self) -> Any:
        return self.net.spec

    def embedder(self, flip: bool = False, batch_size: int = 64, progress: str | None = None) -> Embedder:
        """Aligned image paths -> (N, D) embeddings, the contract edgeface.eval.lfw_eval takes."""
        if self.kind == "artifact":
            from edgeface.runtime.backends import artifact_embedder

            return artifact_embedder(self.net, flip=flip, batch_size=batch_size, progress=progress)
        from edgeface.eval.embed import torch_embedder

        return torch_embedder(self.net.model, self.spec, flip=flip, batch_size=batch_size, progress=progress)


def parse_compare_ref(ref: str) -> tuple[str, str | None]:
    """`NAME@WEIGHTS` -> (NAME, WEIGHTS); an artifact path or a bare NAME -> (ref, None)."""
    if is_artifact(ref) or "@" not in ref:
        return ref, None
    name, _, weights = ref.rpartition("@")
    if not name or not weights:
        raise EdgefaceError(f"cannot read model '{printable(ref)}': write an artifact path or NAME@WEIGHTS")
    return name, weights


def open_model(
    ref: str,
    weights: str | None = None,
    spec_file: str | None = None,
    threads: int | None = None,
    label: str | None = None,
) -> EvalModel:
    """Load what `ref` names; for an artifact, `weights` and `spec_file` are refused (it carries both)."""
    if is_artifact(ref):
        if weights is not None or spec_file is not None:
            raise EdgefaceError(
                f"{printable(ref)} is an exported artifact: it carries its weights and spec, so --weights "
                "and --spec do not apply"
            )
        from edgeface.runtime.backends import load_artifact

        art = load_artifact(ref, num_threads=threads)
        return EvalModel(label or Path(ref).name, "artifact", art, Path(ref), Path(ref).stat().st_size)
    import torch

    from edgeface.eval.embed import TorchFaceModel
    from edgeface.models.loading import load_model

    loaded = load_model(ref, weights, spec_file)
    _fast_layout(loaded.model, (loaded.spec.channels, *loaded.spec.input_size))
    if threads:
        torch.set_num_threads(threads)
    name = label or (f"{ref}@{Path(weights).name}" if weights else ref)
    size = sum(p.numel() * p.element_size() for p in loaded.model.state_dict().values())
    net = TorchFaceModel(loaded.model, loaded.spec, name=name)
    return EvalModel(name, "pytorch", net, Path(weights) if weights else None, int(size))


def _fast_layout(model: Any, input_shape: tuple[int, int, int]) -> None:
    """Run `model` in channels_last when it can: same numbers (|diff| ~ 1e-6), ~1.6x faster on CPU, since
    oneDNN runs depthwise/1x1 convs best in NHWC. A forward that reads memory order, as the common
    `x.view(x.size(0), -1)` flatten does, fails on NHWC tensors: such a model stays in NCHW."""
    import torch

    model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            model(torch.zeros(2, *input_shape))
    except Exception:  # noqa: BLE001 - any failure here only means NHWC does not suit this model
        model.to(memory_format=torch.contiguous_format)


def check_finite(embeddings: np.ndarray, paths: Sequence[Path]) -> None:
    """NaN weights or a broken spec: a report of NaN scores would be a silent wrong answer."""
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise EdgefaceError(
            f"the model returned NaN or infinite embeddings for {int(bad.sum())} of {len(paths)} images "
            f"(first: {printable(paths[int(np.argmax(bad))].name)}); check the weights and the spec's "
            "mean/std"
        )
