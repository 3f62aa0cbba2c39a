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
FALLBACK_FACTOR = 4.0  # an edge quantizer with this many times the mean loss leaves its layers float
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
        x = normalize([read_image(p) for p in chunk], spec.replace(layout="NCHW"))  # torch takes NCHW
        out.append(torch.from_numpy(x))
        bar.update(len(chunk))
    bar.close()
    return out


def prepare_float(
    model: nn.Module,
    input_shape: Sequence[int] = (3, 112, 112),
    keep_float: Sequence[str] = (),
) -> tuple[fx.GraphModule, Placement]:
    """Trace, fold BN and layer scale, analyse on an example input and place quantizers (not inserted).

    The result still computes the float function of `model`; everything here depends on the graph and
    the input shape only, so `rebuild` replays it exactly from a checkpoint record.
    """
    example = example_input(input_shape)
    gm = fold_bn(model, example=example)
    analyze(gm, example)
    if fold_layer_scale(gm):
        analyze(gm, example)
    return gm, placement(gm, keep_float)


def quantize_structure(
    model: nn.Module,
    bits: str = "w8a8",
    layer_bits: dict[str, int] | None = None,
    plan: dict[str, dict[str, int]] | None = None,
    input_shape: Sequence[int] = (3, 112, 112),
    keep_float: Sequence[str] = (),
) -> fx.GraphModule:
    """Fold and insert quantizers (uncalibrated). With `plan` (from a record) the bits are taken as is."""
    gm, place = prepare_float(model, input_shape, keep_float)
    plan = plan or resolve_bits(place, bits, layer_bits)
    insert_quantizers(gm, place, plan)
    setattr(gm, RECORD_ATTR, new_record(bits, plan, place, input_shape))
    return gm


def new_record(
    bits: str, plan: dict[str, Any], place: Placement, input_shape: Sequence[int]
) -> dict[str, Any]:
    """The structural part of a checkpoint's quant record: all `rebuild` needs besides the weights."""
    return {
        "kind": "quant",
        "bits": bits,
        "plan": copy.deepcopy(plan),
        "input_shape": [int(s) for s in input_shape],
        "keep_float": list(place.keep_float),
    }


def spec_input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    h, w = spec.input_size
    return (spec.channels, int(h), int(w))


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
    fallback: float = FALLBACK_FACTOR,
) -> fx.GraphModule:
    """Quantize a copy of `model` (left untouched) and calibrate it on `num_images` of `images`.

    With `bias_correction` the per-channel mean shift that quantization causes is moved into each layer's
    bias (see calibrate.correct_bias); on MobileFaceNet w8a8 it lifts the mean cosine to fp32 from about
    0.9950 to 0.9957. `smooth` ("auto": chosen per LayerNorm by measurement; a float:
    SmoothQuant's alpha; None: off) migrates outlier channels after LayerNorms into the following layers
    (smooth.py). `plan` fixes every bit width (mixed precision). `fallback` (a multiple
    of the mean measured loss per quantizer, 0 = off) leaves float the int8 layers whose float input int8
    cannot carry (fallback.py); not with a fixed `plan`, whose layers are given.
    """
    start = time.perf_counter()
    batches, used = calibration_batches(images, spec, num_images, batch_size, progress)
    shape = spec_input_shape(spec)
    qmodel, place = prepare_float(model, shape, keep_float)
    given_plan = plan
    plan = plan or resolve_bits(place, bits, layer_bits)
    smoothed = migrate_outliers(qmodel, place, batches, smooth, plan)
    from edgeface.converters.torch_rewrite import equalize_prelus  # exact: the float function is kept

    equalized = equalize_prelus(qmodel, batches)
    reference = copy.deepcopy(qmodel)
    insert_quantizers(qmodel, place, plan)
    record = new_record(bits, plan, place, shape)
    setattr(qmodel, RECORD_ATTR, record)
    calibrate(qmodel, batches, calibration, percentile, progress)
    if fallback > 0 and given_plan is None:
        from edgeface.compress.quant.fallback import sensitive_layers

        chosen = sensitive_layers(qmodel, reference, place, batches, fallback)
        # a layer named in layer_bits is the user's decision; a class entry ("Linear=7") sets bits, not that
        chosen = {k: v for k, v in chosen.items() if k not in (layer_bits or {})}
        if chosen:
            keep = [*keep_float, *sorted(chosen)]
            moved = _transplant(model, qmodel, shape, keep, bits, layer_bits)
            if moved is None:  # the float layers need quantizers calibration never saw: start over
                again = ptq(
                    model, spec, batches, bits, calibration, num_images, layer_bits, percentile, batch_size,
                    progress, bias_correction, keep, smooth, None, fallback=0.0,
                )  # fmt: skip
                getattr(again, RECORD_ATTR).update(
                    fallback=chosen, num_images=used, wall_s=round(time.perf_counter() - start, 2)
                )
                return again
            qmodel, place, plan = moved
            record = new_record(bits, plan, place, shape)
            record["fallback"] = chosen
            setattr(qmodel, RECORD_ATTR, record)
    if bias_correction:
        correct_bias(qmodel, reference, batches, place.axes)
    record.update(
        method="ptq",
        calibration=calibration,
        num_images=used,
        bias_correction=bias_correction,
        smooth=smooth,
        smoothed=smoothed,
        prelu_equalized=equalized,
        wall_s=round(time.perf_counter() - start, 2),
    )
    if calibration == "percentile":
        record["percentile"] = percentile
    return qmodel.eval()


def _transplant(
    model: nn.Module,
    qmodel: fx.GraphModule,
    shape: Sequence[int],
    keep_float: list[str],
    bits: str,
    layer_bits: dict[str, int] | None,
) -> tuple[fx.GraphModule, Placement, dict[str, dict[str, int]]] | None:
    """The structure with `keep_float`, holding `qmodel`'s (smoothed, calibrated) values; None if it needs
    a quantizer `qmodel` does not have."""
    gm, place = prepare_float(model, shape, keep_float)
    plan = resolve_bits(place, bits, layer_bits)
    old = qmodel.state_dict()
    if not set(plan["activations"]) <= set(activation_names(qmodel)):
        return None
    insert_quantizers(gm, place, plan)
    new = gm.state_dict()
    if any(k not in old or old[k].shape != v.shape for k, v in new.items()):
        return None
    gm.load_state_dict({k: old[k] for k in new}, strict=True)
    return gm, place, plan


def activation_names(qmodel: nn.Module) -> list[str]:
    from edgeface.compress.quant.fakequant import ActQuant

    return [n for n, m in qmodel.named_modules() if isinstance(m, ActQuant)]


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
