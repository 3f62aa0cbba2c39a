"""Training/calibration data for compression: aligned face images as network-ready tensors.

Calibration (PTQ), QAT and distillation fine-tunes all read images the same way the model is evaluated and
deployed: decoding and normalisation come only from `edgeface.runtime.preprocess`, so a model is never
fine-tuned on inputs that differ from what it sees on the device. Augmentation happens afterwards, in torch,
on the normalised batch (see `augment`), because it must not re-implement any preprocessing.

Public API:
    FaceImages(paths, spec)                      -> Dataset of float32 CHW tensors
    face_loader(paths, spec, batch_size, ...)    -> DataLoader (sharded under torch.distributed)
    epoch_batches(n, batch_size, epoch, seed, rank, world, drop_last) -> this rank's batches of one epoch
    batch_loader(paths, spec, batches, num_workers) -> DataLoader over given index batches (resumable)
    augment(x, generator, max_shift=4, flip=True) -> randomly mirrored / shifted copy of an NCHW batch
    Augmenter(spec, preset)                      -> callable(x, generator): "basic" or "strong" views
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from edgeface.errors import EdgefaceError
from edgeface.runtime.preprocess import normalize, read_image
from edgeface.spec import ModelSpec

AUGMENTATIONS = ("basic", "strong")


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


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True
) -> list[list[int]]:
    """This rank's batches (image indices) of one epoch, a pure function of (seed, epoch).

    Written out instead of a sampler so a resumed run can skip exactly the batches it already trained on
    without decoding them, and every rank gets the same number of batches (DDP needs equal step counts):
    the shuffled order is padded by wrapping to a multiple of the world size, then dealt round-robin.
    `drop_last` keeps batches full (batch statistics and in-batch negatives depend on it) unless one rank's
    share would not fill a single batch, so a tiny dataset still trains.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    if world > 1:
        order += order[: (-n) % world]
        order = order[rank::world]
    drop_last = drop_last and len(order) >= batch_size
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def batch_loader(
    paths: Sequence[Path], spec: ModelSpec, batches: Sequence[Sequence[int]], num_workers: int = 0
) -> DataLoader[torch.Tensor]:
    return DataLoader(FaceImages(paths, spec), batch_sampler=list(batches), num_workers=num_workers)


def face_loader(
    paths: Sequence[Path],
    spec: ModelSpec,
    batch_size: int = 64,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader[torch.Tensor]:
    """One epoch's loader (epoch 0 order when shuffled); shards across ranks under torch.distributed."""
    rank, world = _world()
    if shuffle:
        batches = epoch_batches(len(paths), batch_size, 0, seed, rank, world, drop_last)
    else:
        idx = list(range(rank, len(paths), world))
        batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if not batches:
        raise EdgefaceError("no training images given")
    return batch_loader(paths, spec, batches, num_workers)


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


class Augmenter:
    """Random views of a normalised batch for distillation.

    `basic`: mirror + shift of up to 4 px (`augment`). `strong` adds what a phone camera and a detector
    actually vary, within what alignment leaves: crop jitter (scale 0.92-1.08, shift up to 6 px, rotation up
    to 4 degrees: the residual error of 5-point alignment), colour (brightness, contrast, saturation +-25 %,
    with p=0.8), Gaussian blur (sigma 0.3-1.4 px with p=0.3: focus and motion) and greyscale (p=0.05).
    Colour is applied in pixel units: the batch is un-normalised with the spec's mean/std and normalised
    back, so the spec stays the only place that knows the scaling. The teacher sees the same views.
    """

    def __init__(self, spec: ModelSpec, preset: str = "basic") -> None:
        if preset not in AUGMENTATIONS:
            raise EdgefaceError(f"unknown augmentation '{preset}'; choose one of {', '.join(AUGMENTATIONS)}")
        self.preset = preset
        order = [2, 1, 0] if spec.channel_order == "BGR" else [0, 1, 2]  # luminance weights follow channels
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        weights = [1.0] if spec.channels == 1 else [[0.299, 0.587, 0.114][k] for k in order]  # GRAY is luma
        self.luma = torch.tensor(weights, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.preset == "basic":
            return augment(x, gen)
        n = x.shape[0]
        u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        # geometry: one affine resample per sample (mirror folded into the x scale)
        scale = 0.92 + 0.16 * u(n)
        angle = math.radians(4.0) * (2 * u(n) - 1)
        mirror = torch.where(u(n) < 0.5, -1.0, 1.0)
        h, w = x.shape[-2:]
        shift = (2 * u(n, 2) - 1) * 6.0 * 2 / torch.tensor([w, h], dtype=torch.float32)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        row0 = torch.stack([cos * mirror, -sin, shift[:, 0]], 1)
        row1 = torch.stack([sin * mirror, cos, shift[:, 1]], 1)
        theta = torch.stack([row0, row1], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # colour, in pixel units [0, 1]
        pix = out * self.std + self.mean
        jitter = (u(n) < 0.8).float().view(n, 1, 1, 1)
        bright = 1 + jitter * 0.25 * (2 * u(n, 1, 1, 1) - 1)
        contrast = 1 + jitter * 0.25 * (2 * u(n, 1, 1, 1) - 1)
        sat = 1 + jitter * 0.25 * (2 * u(n, 1, 1, 1) - 1)
        grey = (pix * self.luma).sum(1, keepdim=True)
        pix = grey + (pix - grey) * sat
        pix = pix * bright
        mean_grey = (pix * self.luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        pix = mean_grey + (pix - mean_grey) * contrast
        to_grey = (u(n) < 0.05).view(n, 1, 1, 1)
        pix = torch.where(to_grey, (pix * self.luma).sum(1, keepdim=True).expand_as(pix), pix)
        pix = pix.clamp(0.0, 1.0)
        # blur: separable Gaussian, per-sample sigma, on the samples drawn for it
        blur = u(n) < 0.3
        if bool(blur.any()):
            idx = blur.nonzero().flatten()
            sigma = 0.3 + 1.1 * u(len(idx))
            pix[idx] = _gaussian_blur(pix[idx], sigma)
        return ((pix - self.mean) / self.std).contiguous()


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding), as two depthwise convs."""
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, taps)
    xs = x.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0)
    xs = F.conv2d(F.pad(xs, (radius, radius, 0, 0), mode="reflect"), kx.view(n * c, 1, 1, -1), groups=n * c)
    xs = F.conv2d(F.pad(xs, (0, 0, radius, radius), mode="reflect"), kx.view(n * c, 1, -1, 1), groups=n * c)
    return xs.reshape(n, c, h, w)
