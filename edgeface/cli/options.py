"""Options shared by every command that takes a PyTorch model, so they read the same everywhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def model_options(fn: F) -> F:
    fn = click.option(
        "--spec",
        "spec_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Model spec JSON overriding the model's own (input size, mean/std, channel order).",
    )(fn)
    fn = click.option(
        "--weights",
        "-w",
        type=click.Path(dir_okay=False),
        default=None,
        help="Checkpoint (.pt): a state_dict, a common wrapper, or an edgeface compressed checkpoint.",
    )(fn)
    fn = click.option(
        "--model",
        "-m",
        required=True,
        help="Built-in name (see `edgeface models`) or package.module:factory.",
    )(fn)
    return fn


def join_distributed() -> tuple[int, int]:
    """Join the torchrun process group when launched under torchrun; (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world
