"""Quantization-aware training: PTQ start, then distill the fake-quant student from the float teacher.

Starting from calibrated PTQ (not from scratch) means the very first step already trains the network that
will be deployed; the teacher is the untouched float model, so no labels or classification head are needed
(cosine KD and label-free EKD from edgeface.compress.distill). BN is folded before training, so the
student trains the folded weights the integer runtime will use. Activation ranges stay at their calibrated
values; weight scales follow the weights (per-channel max |w|) every step.

QAT must not end worse than the PTQ model it starts from: a few held-out faces of the training folder
(never trained on) measure the mean cosine to the float teacher before and after training, and when training
lowered it the PTQ weights are restored (the record says which was kept). Measured on mobilefacenet_ms1m
w8a8 (128 held-out faces): PTQ 0.99545 mean cosine, after 20 steps at lr 5e-5 0.99491, so a short QAT at
that rate moves the weights further than the fake-quant gradient can justify; at lr 1e-5 0.99560 (better
than PTQ). AdamW moves every weight by about lr per step whatever its gradient, so the rate that refines
rather than scrambles a PTQ start follows the weight grid step, 4x finer at 8 bits than at 6: `default_lr`.
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
    lr: float | None = None,
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
    from edgeface.compress.distill import ValidationCosine, distill

    lr = default_lr(bits) if lr is None else lr
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
    train, held = held_out(images, seed)
    check = ValidationCosine(teacher, held, spec) if held else None
    ptq_cos = check(qmodel)[0] if check is not None else None
    ptq_state = copy.deepcopy(qmodel.state_dict())
    stats = distill(
        qmodel,
        teacher,
        train,
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
    kept = "qat"
    qat_cos = check(qmodel)[0] if check is not None else None
    if ptq_cos is not None and qat_cos is not None and qat_cos < ptq_cos:
        qmodel.load_state_dict(ptq_state)  # training made it worse on unseen faces: keep the PTQ start
        kept = "ptq"
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
        train_images=len(train),
        held_out_images=len(held),
        held_out_cos_ptq=None if ptq_cos is None else round(ptq_cos, 6),
        held_out_cos_qat=None if qat_cos is None else round(qat_cos, 6),
        kept=kept,
        wall_s=round(time.perf_counter() - start, 2),
    )
    return qmodel, stats


def default_lr(bits: str) -> float:
    """QAT learning rate for `bits`: 1e-5 with 8-bit weights (measured above), 5e-5 for narrower grids (the
    w6a6 QAT of docs/compression.md), whose PTQ start is further from fp32 and whose grid step is coarser."""
    return 1e-5 if bits.lower().startswith("w8") else 5e-5


HELD_OUT = 128  # faces kept out of QAT training to check it against its PTQ start


def held_out(images: Sequence[Path], seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(training images, held-out check images): a seeded quarter of the folder, at most HELD_OUT; none
    when the folder is too small to spare 8 faces (then QAT's result is kept unchecked)."""
    import random

    n = min(HELD_OUT, len(images) // 4)
    if n < 8:
        return list(images), []
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [p for i, p in enumerate(images) if i not in held], [images[i] for i in sorted(held)]
