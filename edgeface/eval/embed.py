"""Turn image paths into embeddings with a PyTorch model, through the runtime's own preprocessing.

Every consumer that measures a model (LFW evaluation, compression reports, export parity) takes an
`Embedder`: a callable from image paths to an (N, D) float32 array. `torch_embedder` builds one for a
PyTorch model; `edgeface.runtime` builds one for an exported artifact, so both are measured identically.

`TorchFaceModel` puts a PyTorch model behind the face interface of a runtime `Artifact` (`spec`,
`embed(aligned faces, flip)`), so the on-device `Pipeline` (detection, face choice, alignment) can feed a
model that has not been exported yet: raw photos are measured the same way for both.
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


class TorchFaceModel:
    """Aligned BGR uint8 faces -> (N, D) float32 embeddings, as `Artifact.embed` does for an artifact."""

    num_threads: int | None = None  # torch keeps its own thread settings

    def __init__(self, model: nn.Module, spec: ModelSpec, name: str = "model", batch_size: int = 64) -> None:
        self.model, self.spec, self.batch_size = model, spec, batch_size
        self.path = Path(name)  # named in messages, as an artifact's file is
        self.backend = "pytorch"

    def embed(self, faces_bgr: Sequence[np.ndarray], flip: bool = False) -> np.ndarray:
        self.model.eval()
        out: list[np.ndarray] = []
        nchw = self.spec.replace(layout="NCHW")  # torch models take NCHW whatever the artifact layout
        with torch.inference_mode():
            for start in range(0, len(faces_bgr), self.batch_size):
                x = normalize(faces_bgr[start : start + self.batch_size], nchw, flip)
                out.append(self.model(torch.from_numpy(x)).float().numpy())
        if not out:
            return np.zeros((0, self.spec.embedding_dim), np.float32)
        return np.concatenate(out).astype(np.float32)


def torch_embedder(
    model: nn.Module, spec: ModelSpec, flip: bool = False, batch_size: int = 64, progress: str | None = None
) -> Embedder:
    """With `flip`, an image's embedding is the sum of its own and its mirror's (standard LFW TTA)."""
    from tqdm.auto import tqdm

    face_model = TorchFaceModel(model, spec, batch_size=batch_size)

    def embed(paths: Sequence[Path]) -> np.ndarray:
        out: list[np.ndarray] = []
        bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
        for start in range(0, len(paths), batch_size):
            faces = [read_image(p) for p in paths[start : start + batch_size]]
            e = face_model.embed(faces)
            if flip:
                e = e + face_model.embed(faces, flip=True)
            out.append(e)
            bar.update(len(faces))
        bar.close()
        if not out:
            return np.zeros((0, spec.embedding_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    return embed
