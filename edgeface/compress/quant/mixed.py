"""Automatic mixed precision: spend bits where the embedding is sensitive, save them where it is not.

Sensitivity of a layer at b bits = mean (1 - cosine) between the float model's embedding and the embedding
with *only that layer* quantized (its weights at b bits and its output activation at max(b, 6) bits, all
else float), measured on a few calibration images. Layers are then lowered greedily from the widest
candidate, always taking the step with the least added sensitivity per byte saved, until the weights fit
the size budget. Additive sensitivities are an approximation, but a cheap one that ranks layers well.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeface.compress.quant.calibrate import calibrate
from edgeface.compress.quant.fakequant import check_bits
from edgeface.compress.quant.plan import model_size_bytes
from edgeface.compress.quant.prepare import (
    Placement,
    activation_quantizers,
    expand_layer_bits,
    insert_quantizers,
    placement,
    resolve_bits,
    set_quant_enabled,
    weight_quantizers,
)
from edgeface.compress.quant.ptq import (
    RECORD_ATTR,
    SMOOTH_ALPHA,
    load_batches,
    migrate_outliers,
    pick_images,
    prepare_float,
    ptq,
    spec_input_shape,
)
from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec


def act_bits_for(bits: int) -> int:
    return max(bits, 6)


def parse_budget(text: str | float, fp32_bytes: int) -> int:
    """'0.2' -> 20 % of the float model's bytes; '300000' or '300KB'/'1.5MB' -> bytes."""
    s = str(text).strip().upper()
    try:
        for suffix, mult in (("KB", 1000), ("MB", 1000**2), ("B", 1)):
            if s.endswith(suffix):
                return int(float(s[: -len(suffix)]) * mult)
        value = float(s)
    except ValueError:
        raise EdgefaceError(
            f"--size-budget '{text}': give bytes (e.g. 300000, 300KB) or a ratio like 0.2"
        ) from None
    if value <= 0:
        raise EdgefaceError(f"--size-budget must be > 0, got {text}")
    return int(value * fp32_bytes) if value <= 1 else int(value)


def _copy(base: fx.GraphModule, place: Placement) -> tuple[fx.GraphModule, Placement]:
    """A deep copy of a prepared float graph with its placement (node meta survives deepcopy)."""
    gm = copy.deepcopy(base)
    return gm, placement(gm, place.keep_float)


def sensitivity(
    base: fx.GraphModule,
    place: Placement,
    batches: list[torch.Tensor],
    candidates: Sequence[int],
    calibration: str = "mse",
    progress: bool = True,
) -> dict[str, dict[int, float]]:
    """{layer: {bits: mean 1 - cos}} for each weight layer and candidate width, on a prepared float graph."""
    from tqdm.auto import tqdm

    with torch.no_grad():
        ref = [base.eval()(x) for x in batches]
    result: dict[str, dict[int, float]] = {}
    for b in candidates:
        gm, p = _copy(base, place)
        plan = resolve_bits(p, f"w{b}a{act_bits_for(b)}", keep_ends_8bit=False)
        insert_quantizers(gm, p, plan)
        calibrate(gm, batches, calibration, progress=False)
        set_quant_enabled(gm, weights=False, activations=False)
        acts = activation_quantizers(gm)
        out_of = {pt.layer: pt.name for pt in p.points if pt.layer}
        layers = weight_quantizers(gm)
        for name, layer in tqdm(
            layers.items(), desc=f"sensitivity {b}-bit", disable=not progress, leave=False
        ):
            layer.quant_enabled = True
            aq = acts.get(out_of.get(name, ""))
            if aq is not None:
                aq.enabled = True
            with torch.no_grad():
                loss = sum(
                    float((1 - F.cosine_similarity(gm(x), r)).sum())
                    for x, r in zip(batches, ref, strict=True)
                )
            result.setdefault(name, {})[b] = loss / sum(int(x.shape[0]) for x in batches)
            layer.quant_enabled = False
            if aq is not None:
                aq.enabled = False
    return result


def choose_bits(
    sens: dict[str, dict[int, float]], numels: dict[str, int], budget_bits: int, fixed: dict[str, int]
) -> dict[str, int]:
    """Greedy: from the widest width, lower the layer with the least sensitivity increase per bit saved."""
    bits = {name: fixed.get(name, max(s)) for name, s in sens.items()}

    def size() -> int:
        return sum(numels[n] * b for n, b in bits.items())

    while size() > budget_bits:
        best: tuple[float, str, int] | None = None
        for name, options in sens.items():
            if name in fixed:
                continue
            lower = [b for b in options if b < bits[name]]
            if not lower:
                continue
            nb = max(lower)
            cost = (options[nb] - options[bits[name]]) / (numels[name] * (bits[name] - nb))
            if best is None or cost < best[0]:
                best = (cost, name, nb)
        if best is None:
            break
        bits[best[1]] = best[2]
    return bits


def mixed_precision(
    model: nn.Module,
    spec: ModelSpec,
    images: Sequence[Path],
    size_budget: str | float,
    candidates: Sequence[int] = (8, 6),
    calibration: str = "mse",
    num_images: int = 512,
    sensitivity_images: int = 64,
    layer_bits: dict[str, int] | None = None,
    progress: bool = True,
    keep_float: Sequence[str] = (),
    smooth: float | str | None = SMOOTH_ALPHA,
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """PTQ with per-layer weight bits chosen for `size_budget` (bytes, or a ratio of the fp32 size)."""
    start = time.perf_counter()
    candidates = sorted({check_bits(b, "candidate bits") for b in candidates}, reverse=True)
    fp32_bytes = model_size_bytes(model)
    budget = parse_budget(size_budget, fp32_bytes)
    chosen_images = pick_images(images, num_images)
    batches = load_batches(chosen_images, spec, progress=progress)
    sens_batches = load_batches(chosen_images[:sensitivity_images], spec)
    base, place = prepare_float(model, spec_input_shape(spec), keep_float)
    migrate_outliers(base, place, batches, smooth, resolve_bits(place, "w8a8", keep_ends_8bit=False))
    sens = sensitivity(base, place, sens_batches, candidates, calibration, progress)

    layer_bits = expand_layer_bits(place, layer_bits)
    fixed = {k: int(v) for k, v in layer_bits.items() if k in sens}
    numels = {n: int(base.get_submodule(n).weight.numel()) for n in sens}
    # bytes outside the quantized weights (scales, biases, other params) do not depend on the choice
    probe, p = _copy(base, place)
    insert_quantizers(probe, p, resolve_bits(p, f"w{candidates[0]}a8", keep_ends_8bit=False))
    overhead_bits = model_size_bytes(probe) * 8 - sum(numels[n] * candidates[0] for n in numels)
    bits = choose_bits(sens, numels, budget * 8 - overhead_bits, fixed)
    plan = resolve_bits(place, "w8a8", {**(layer_bits or {}), **bits}, keep_ends_8bit=False)
    out_of = {pt.layer: pt.name for pt in place.points if pt.layer}
    for name, b in bits.items():
        if name in out_of:
            plan["activations"][out_of[name]] = act_bits_for(b)
    final = ptq(
        model,
        spec,
        batches,
        bits="mixed",
        calibration=calibration,
        progress=progress,
        keep_float=keep_float,
        smooth=smooth,
        plan=plan,
    )
    size = model_size_bytes(final)
    if size > budget:
        raise EdgefaceError(
            f"--size-budget {size_budget} ({budget} bytes) is below the smallest reachable size {size} bytes "
            f"with bits {candidates}; raise the budget or allow fewer bits (--candidates)"
        )
    report = {
        "budget_bytes": budget,
        "size_bytes": size,
        "fp32_bytes": fp32_bytes,
        "candidates": list(candidates),
        "sensitivity": {n: {str(b): v for b, v in s.items()} for n, s in sens.items()},
        "layer_bits": bits,
    }
    record: dict[str, Any] = getattr(final, RECORD_ATTR)
    record.update(
        num_images=len(chosen_images),
        size_budget=str(size_budget),
        candidates=list(candidates),
        wall_s=round(time.perf_counter() - start, 2),
    )
    return final.eval(), report
