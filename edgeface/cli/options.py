"""Options shared by the commands, and the one validation layer for numbers typed on the command line.

Every numeric option goes through a type below, so a value is finite and in range when the command body
sees it: click's own FloatRange lets `nan` through (every comparison with NaN is false) and `inf` wherever
one side is open, and an unbounded IntRange hands C libraries integers they overflow on. A bad value is a
usage error: one `error:` line, exit 2, before anything is loaded or written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

import click

from edgeface.errors import EdgefaceError
from edgeface.machine import machine_cores

F = Callable[..., Any]

C_INT_MAX = 2**31 - 1  # the largest count a C `int` parameter (thread pools, batch sizes) takes
MAX_BATCH = 4096  # a bigger batch of 112x112 faces never helps on CPU and only risks running out of memory


class FiniteFloat(click.FloatRange):
    """A float in a range that is never NaN or infinite (click's FloatRange accepts both)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) and math.isfinite(value):
            return super().convert(value, param, ctx)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class Count(click.IntRange):
    """An integer in [min, max]; max defaults to the C int range so no library sees an overflowed value."""

    def __init__(self, min: int = 1, max: int = C_INT_MAX) -> None:
        super().__init__(min=min, max=max)


class ThreadCount(Count):
    """Threads: refused past the C int range, capped at the machine's cores with a warning.

    More threads than cores only adds contention, and onnxruntime/OpenCV crash on absurd pool sizes
    (100000 threads segfaulted), so the cap protects the process rather than tuning it.
    """

    name = "threads"

    def __init__(self) -> None:
        super().__init__(min=1, max=C_INT_MAX)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        n = super().convert(value, param, ctx)
        cores = machine_cores()
        if n > cores:
            flag = param.opts[0] if param is not None and param.opts else "--threads"
            msg = f"warning: {flag} {n} is more than this machine's {cores} cores; using {cores}"
            click.echo(msg, err=True)
            n = cores
        return n


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(KB|MB|B)?\s*$", re.IGNORECASE)


class SizeBudget(click.ParamType):
    """Bytes (300000, 300KB, 1.5MB) or a ratio of the fp32 size (0.2): finite and > 0. The text itself
    is passed on unchanged; this only refuses what cannot be a size before the model is loaded."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        m = _BUDGET.match(str(value))
        number = float(m.group(1)) if m else math.nan
        if not m or not math.isfinite(number) or number <= 0 or number > 1e15:
            self.fail(f"{value!r}: give bytes (e.g. 300000, 300KB, 1.5MB) or a ratio like 0.2", param, ctx)
        return value


# The types, named for what they measure, so every command declares the same quantity the same way.
THREADS = ThreadCount()
THRESHOLD = FiniteFloat(-1.0, 1.0)  # a cosine similarity
PROBABILITY_OPEN = FiniteFloat(0.0, 1.0, min_open=True, max_open=True)  # a FAR, a pruning ratio
COSINE_FLOOR = FiniteFloat(0.0, 1.0, min_open=True)  # --min-cosine
LEARNING_RATE = FiniteFloat(0.0, 1.0, min_open=True)
MINUTES = FiniteFloat(0.0, 1e6, min_open=True)  # > 0: a zero budget used to mean "no budget" silently
SECONDS = FiniteFloat(0.0, 1e8, min_open=True)
BATCH = Count(1, MAX_BATCH)
SEED = Count(0, C_INT_MAX)
SIZE_BUDGET = SizeBudget()


def threads_option(fn: F) -> F:
    return click.option(
        "--threads",
        type=THREADS,
        default=None,
        help="Inference (and OpenCV) threads; at most the machine's cores.",
    )(fn)


# edgeface.runtime.select.POLICIES, spelled out so `--help` does not import the runtime (OpenCV;
# tests/test_runtime_faces.py checks that the two agree). `all` gives one result per face, which only
# verify/identify can report.
FACE_POLICIES = ("auto", "largest", "center", "highest-score", "all")
ONE_FACE_POLICIES = FACE_POLICIES[:-1]


detector_option = click.option(
    "--detector",
    type=click.Path(dir_okay=False),
    default=None,
    help="YuNet ONNX file (default: the pack's, else $EDGEFACE_YUNET, else "
    "../shared/models/face_detection_yunet_2026may.onnx).",
)
_LANDMARKER_KEY = "edgeface.landmarker"


def _keep_landmarker(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_LANDMARKER_KEY] = value


def _no_refine_flag(fn: F) -> F:
    return click.option(
        "--no-refine",
        is_flag=True,
        help="Use YuNet's first landmarks; skip re-detecting small faces upscaled (faster detection).",
    )(fn)


def no_refine_option(fn: F) -> F:
    """--no-refine and --landmarker: how landmarks are refined after detection (read back with
    `refine_setting`)."""
    fn = click.option(
        "--landmarker",
        type=click.Path(dir_okay=False),
        default=None,
        expose_value=False,
        callback=_keep_landmarker,
        help="Face-mesh landmark model (MediaPipe face_landmark.tflite, needs ai-edge-litert) giving the "
        "landmarks instead of YuNet's re-detection: more precise and faster (docs/face_selection.md) "
        "[env EDGEFACE_LANDMARKER].",
    )(fn)
    return _no_refine_flag(fn)


def refine_setting(no_refine: bool) -> bool | str:
    """What the runtime's `refine_landmarks` takes: False (--no-refine), the --landmarker path, or True."""
    ctx = click.get_current_context(silent=True)
    path = ctx.meta.get(_LANDMARKER_KEY) if ctx is not None else None
    if no_refine and path:
        raise EdgefaceError(
            "--no-refine keeps YuNet's first landmarks and --landmarker replaces them: pass one"
        )
    if no_refine:
        return False
    return path or True


def face_source_options(fn: F) -> F:
    """How faces are taken from the images of --data (eval, compare, threshold): aligned crops as they are,
    else detection with one face per photo."""
    for opt in reversed(
        [
            click.option(
                "--aligned",
                is_flag=True,
                help="--data images are aligned face crops: no detection (aspect ratio kept).",
            ),
            click.option(
                "--face",
                "face_policy",
                type=click.Choice(ONE_FACE_POLICIES),
                default="auto",
                show_default=True,
                help="--data photos: which face of a photo (as edgeface verify).",
            ),
            detector_option,
            no_refine_option,
        ]
    ):
        fn = opt(fn)
    return fn


def threshold_option(fn: F) -> F:
    return click.option(
        "--threshold",
        type=THRESHOLD,
        default=None,
        help="Cosine threshold in [-1, 1], overriding the artifact's calibrated one.",
    )(fn)


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
