"""Turn image paths into embeddings with a PyTorch model, through the runtime's own preprocessing.

Every consumer that measures a model (LFW evaluation, compression reports, export parity) takes an
`Embedder`: a callable from image paths to an (N, D) float32 array. `torch_embedder` builds one for a
PyTorch model; `edgeface.runtime` builds one for an exported artifact, so both are measured identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeface.runtime.preprocess import normalize, read_image
from edgeface.spec import ModelSpec

Embedder = Callable[[Sequence[Path]], np.ndarray]


def torch_embedder(
    model: nn.Module, spec: ModelSpec, flip: bool = False, batch_size: int = 64, progress: str | None = None
) -> Embedder:
    """With `flip`, an image's embedding is the sum of its own and its mirror's (standard LFW TTA)."""
    from tqdm.auto import tqdm

    def embed(paths: Sequence[Path]) -> np.ndarray:
        model.eval()
        out: list[np.ndarray] = []
        bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
        with torch.inference_mode():
            for start in range(0, len(paths), batch_size):
                faces = [read_image(p) for p in paths[start : start + batch_size]]
                x = normalize(faces, spec)
                if spec.layout == "NHWC":  # torch models take NCHW whatever the artifact layout
                    x = x.transpose(0, 3, 1, 2)
                e = model(torch.from_numpy(np.ascontiguousarray(x))).float()
                if flip:
                    e = e + model(torch.from_numpy(np.ascontiguousarray(x[..., ::-1]))).float()
                out.append(e.numpy())
                bar.update(len(faces))
        bar.close()
        if not out:
            return np.zeros((0, spec.embedding_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    return embed
