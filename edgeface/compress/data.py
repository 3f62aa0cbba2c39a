"""Training/calibration data for compression: aligned face images as network-ready tensors.

Calibration (PTQ), QAT and distillation fine-tunes all read images the same way the model is evaluated and
deployed: decoding and normalisation come only from `edgeface.runtime.preprocess`, so a model is never
fine-tuned on inputs that differ from what it sees on the device. Augmentation happens afterwards, in torch,
on the normalised batch (see `augment`), because it must not re-implement any preprocessing.

Public API:
    FaceImages(paths, spec)                      -> Dataset of float32 CHW tensors
    face_loader(paths, spec, batch_size, ...)    -> DataLoader (DistributedSampler under torch.distributed)
    augment(x, generator, max_shift=4, flip=True) -> randomly mirrored / shifted copy of an NCHW batch
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeface.errors import EdgefaceError
from edgeface.runtime.preprocess import normalize, read_image
from edgeface.spec import ModelSpec


class FaceImages(Dataset[torch.Tensor]):
    """Image paths -> normalised NCHW float32 tensors (torch models take NCHW whatever the spec's layout)."""

    def __init__(self, paths: Sequence[Path], spec: ModelSpec) -> None:
        if not paths:
            raise EdgefaceError("no training images given")
        self.paths = [Path(p) for p in paths]
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = normalize([read_image(self.paths[index])], self.spec)[0]
        if self.spec.layout == "NHWC":
            x = x.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(x))


def face_loader(
    paths: Sequence[Path],
    spec: ModelSpec,
    batch_size: int = 64,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader[torch.Tensor]:
    """A loader that shards across ranks when torch.distributed is initialised (torchrun).

    `drop_last` keeps every training batch full (batch statistics and in-batch negatives of the EKD loss
    depend on it) but is switched off when the data would not fill a single batch per rank, so a tiny
    dataset still trains instead of silently doing nothing.
    """
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    dataset = FaceImages(paths, spec)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    per_rank = len(dataset) // world
    drop_last = drop_last and per_rank >= batch_size
    if world > 1:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last
        )
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        num_workers=num_workers,
        drop_last=drop_last,
    )


def augment(
    x: torch.Tensor, generator: torch.Generator, max_shift: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random horizontal mirror and a shift of up to `max_shift` pixels (reflect-padded) per sample.

    Aligned faces tolerate only mild geometric jitter: the alignment template is what the model learnt, so
    larger crops or rotations would teach it inputs that never occur at inference.
    """
    n, _, h, w = x.shape
    out = x
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    if max_shift > 0:
        padded = torch.nn.functional.pad(out, (max_shift,) * 4, mode="reflect")
        offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    return out.contiguous()
