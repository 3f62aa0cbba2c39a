"""Quantization-aware training: PTQ start, then distill the fake-quant student from the float teacher.

Starting from calibrated PTQ (not from scratch) means the very first step already trains the network that
will be deployed; the teacher is the untouched float model, so no labels or classification head are needed
(cosine KD and label-free EKD from edgeface.compress.distill). BN is folded before training, so the
student trains the folded weights the integer runtime will use. Activation ranges stay at their calibrated
values; weight scales follow the weights (per-channel max |w|) every step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import fx, nn

from edgeface.compress.quant.prepare import weight_quantizers
from edgeface.compress.quant.ptq import FALLBACK_FACTOR, RECORD_ATTR, SMOOTH_ALPHA, ptq
from edgeface.spec import ModelSpec


def finalize(qmodel: nn.Module) -> None:
    """Scales matching the final weights: the optimizer's last step moved them after the last forward."""
    for layer in weight_quantizers(qmodel).values():
        layer.refresh_weight_scale("minmax")


def qat(
    model: nn.Module,
    spec: ModelSpec,
    images: Sequence[Path],
    bits: str = "w6a6",
    loss: str = "cosine",
    epochs: int = 1,
    lr: float = 5e-5,
    batch_size: int = 32,
    max_steps: int | None = None,
    calibration: str = "mse",
    num_images: int = 512,
    layer_bits: dict[str, int] | None = None,
    progress: bool = True,
    seed: int = 0,
    qmodel: fx.GraphModule | None = None,
    max_seconds: float | None = None,
    keep_float: Sequence[str] = (),
    smooth: float | str | None = SMOOTH_ALPHA,
    fallback: float = FALLBACK_FACTOR,
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Returns the trained fake-quant model and the distillation statistics.

    `qmodel` lets a caller start from its own PTQ model (e.g. a mixed-precision plan); otherwise PTQ with
    `calibration` on `num_images` images initialises it. `model` itself is never modified.
    """
    from edgeface.compress.distill import distill

    start = time.perf_counter()
    if qmodel is None:
        qmodel = ptq(
            model,
            spec,
            images,
            bits=bits,
            calibration=calibration,
            num_images=num_images,
            layer_bits=layer_bits,
            progress=progress,
            keep_float=keep_float,
            smooth=smooth,
            fallback=fallback,
        )
    teacher = copy.deepcopy(model).eval()
    # PTQ used MSE-searched weight scales; training re-derives them from max |w| every step, so do the same
    # from the start and the first step sees the grid the rest of training uses.
    finalize(qmodel)
    stats = distill(
        qmodel,
        teacher,
        images,
        spec,
        loss=loss,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_steps=max_steps,
        progress=progress,
        seed=seed,
        max_seconds=max_seconds,
    )
    finalize(qmodel)
    qmodel.eval()
    record: dict[str, Any] = getattr(qmodel, RECORD_ATTR)
    record.update(
        method="qat",
        loss=loss,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        steps=stats["steps"],
        world_size=stats.get("world_size", 1),
        train_images=len(images),
        wall_s=round(time.perf_counter() - start, 2),
    )
    return qmodel, stats
