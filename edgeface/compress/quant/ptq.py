"""Post-training quantization: fold BN, insert fake quantizers, calibrate on a few hundred faces."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from edgeface.compress.quant.calibrate import calibrate, correct_bias
from edgeface.compress.quant.fold import fold_bn, fold_layer_scale
from edgeface.compress.quant.graph import analyze
from edgeface.compress.quant.prepare import (
    Placement,
    example_input,
    insert_quantizers,
    placement,
    resolve_bits,
)
from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

RECORD_ATTR = "edgeface_quant"  # the transform record travels on the quantized module
SMOOTH_ALPHA = "auto"  # migration strength chosen per site by measurement (smooth.py); or a fixed alpha


def pick_images(images: Sequence[Path], num_images: int, seed: int = 0) -> list[Path]:
    """A fixed, spread-out subset: calibration must be reproducible run to run."""
    images = list(images)
    if not images:
        raise EdgefaceError("no calibration images")
    if num_images <= 0:
        raise EdgefaceError(f"--num-images must be > 0, got {num_images}")
    if len(images) <= num_images:
        return images
    idx = np.sort(np.random.default_rng(seed).choice(len(images), num_images, replace=False))
    return [images[i] for i in idx]


def load_batches(
    images: Sequence[Path], spec: ModelSpec, batch_size: int = 64, progress: bool = False
) -> list[torch.Tensor]:
    """Decode and normalise through the runtime's preprocessing (the only place that knows mean/std)."""
    from tqdm.auto import tqdm

    from edgeface.runtime.preprocess import normalize, read_image

    out = []
    images = list(images)
    bar = tqdm(total=len(images), desc="load images", unit="img", disable=not progress, leave=False)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = normalize([read_image(p) for p in chunk], spec)
        if spec.layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        out.append(torch.from_numpy(np.ascontiguousarray(x)))
        bar.update(len(chunk))
    bar.close()
    return out


def prepare_float(
    model: nn.Module,
    input_shape: Sequence[int] = (3, 112, 112),
    keep_float: Sequence[str] = (),
    channel_scales: bool = True,
) -> tuple[fx.GraphModule, Placement]:
    """Trace, fold BN and layer scale, analyse on an example input and place quantizers (not inserted).

    With `channel_scales`, identity ChannelScale modules go on the float edges into int8 layers, for
    smooth.smooth to fill. The result still computes the float function of `model`; everything here
    depends on the graph and the input shape only, so `rebuild` replays it exactly from a record.
    """
    from edgeface.compress.quant.smooth import insert_channel_scales

    example = example_input(input_shape)
    gm = fold_bn(model, example=example)
    analyze(gm, example)
    if fold_layer_scale(gm):
        analyze(gm, example)
    place = placement(gm, keep_float)
    if channel_scales and insert_channel_scales(gm, place):
        analyze(gm, example)
        place = placement(gm, keep_float)
    return gm, place


def quantize_structure(
    model: nn.Module,
    bits: str = "w8a8",
    layer_bits: dict[str, int] | None = None,
    plan: dict[str, dict[str, int]] | None = None,
    input_shape: Sequence[int] = (3, 112, 112),
    keep_float: Sequence[str] = (),
    channel_scales: bool = True,
) -> fx.GraphModule:
    """Fold and insert quantizers (uncalibrated). With `plan` (from a record) the bits are taken as is."""
    gm, place = prepare_float(model, input_shape, keep_float, channel_scales)
    plan = plan or resolve_bits(place, bits, layer_bits)
    insert_quantizers(gm, place, plan)
    setattr(gm, RECORD_ATTR, new_record(bits, plan, place, input_shape, channel_scales))
    return gm


def new_record(
    bits: str, plan: dict[str, Any], place: Placement, input_shape: Sequence[int], channel_scales: bool
) -> dict[str, Any]:
    """The structural part of a checkpoint's quant record: all `rebuild` needs besides the weights."""
    return {
        "kind": "quant",
        "bits": bits,
        "plan": copy.deepcopy(plan),
        "input_shape": [int(s) for s in input_shape],
        "keep_float": list(place.keep_float),
        "channel_scales": bool(channel_scales),
    }


def spec_input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    h, w = spec.input_size
    return (3, int(h), int(w))


def ptq(
    model: nn.Module,
    spec: ModelSpec,
    images: Sequence[Path] | list[torch.Tensor],
    bits: str = "w8a8",
    calibration: str = "percentile",
    num_images: int = 512,
    layer_bits: dict[str, int] | None = None,
    percentile: float = 99.99,
    batch_size: int = 64,
    progress: bool = True,
    bias_correction: bool = True,
    keep_float: Sequence[str] = (),
    smooth: float | str | None = SMOOTH_ALPHA,
    plan: dict[str, dict[str, int]] | None = None,
) -> fx.GraphModule:
    """Quantize a copy of `model` (left untouched) and calibrate it on `num_images` of `images`.

    With `bias_correction` the per-channel mean shift that quantization causes is moved into each layer's
    bias (see calibrate.correct_bias); on MobileFaceNet w8a8 it lifts the mean cosine to fp32 from about
    0.9950 to 0.9957. `smooth` (alpha, None = off) migrates activation outliers after LayerNorms into the
    following layers (smooth.py). `plan` fixes every bit width (mixed precision).
    """
    start = time.perf_counter()
    batches, used = calibration_batches(images, spec, num_images, batch_size, progress)
    shape = spec_input_shape(spec)
    qmodel, place = prepare_float(model, shape, keep_float, channel_scales=smooth is not None)
    plan = plan or resolve_bits(place, bits, layer_bits)
    smoothed = migrate_outliers(qmodel, place, batches, smooth, plan)
    reference = copy.deepcopy(qmodel)
    insert_quantizers(qmodel, place, plan)
    record = new_record(bits, plan, place, shape, smooth is not None)
    setattr(qmodel, RECORD_ATTR, record)
    calibrate(qmodel, batches, calibration, percentile, progress)
    if bias_correction:
        correct_bias(qmodel, reference, batches, place.axes)
    record.update(
        method="ptq",
        calibration=calibration,
        num_images=used,
        bias_correction=bias_correction,
        smooth=smooth,
        smoothed=smoothed,
        wall_s=round(time.perf_counter() - start, 2),
    )
    if calibration == "percentile":
        record["percentile"] = percentile
    return qmodel.eval()


def migrate_outliers(
    gm: fx.GraphModule,
    place: Placement,
    batches: list[torch.Tensor],
    smooth: float | str | None,
    plan: dict[str, dict[str, int]],
) -> dict[str, float]:
    """smooth.smooth with the plan's bit widths; `smooth` is "auto", a fixed alpha in [0, 1], or None."""
    if smooth is None:
        return {}
    from edgeface.compress.quant.smooth import smooth as migrate

    alpha = None if smooth == "auto" else float(smooth)
    return migrate(gm, place, batches, alpha, plan["activations"], plan["weights"])


def calibration_batches(
    images: Sequence[Path] | list[torch.Tensor],
    spec: ModelSpec,
    num_images: int,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[torch.Tensor], int]:
    """Paths -> a fixed subset of normalised batches; ready batches pass through."""
    if images and isinstance(images[0], torch.Tensor):
        batches = list(images)  # type: ignore[arg-type]
        return batches, sum(int(b.shape[0]) for b in batches)
    chosen = pick_images(images, num_images)  # type: ignore[arg-type]
    return load_batches(chosen, spec, batch_size, progress), len(chosen)
