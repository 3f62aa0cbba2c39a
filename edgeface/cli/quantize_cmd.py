"""`edgeface quantize`: PTQ / QAT / mixed precision to a checkpoint every command's `--weights` takes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from edgeface.cli.options import (
    BATCH,
    LEARNING_RATE,
    MINUTES,
    SIZE_BUDGET,
    Count,
    FiniteFloat,
    join_distributed,
    model_options,
)
from edgeface.io import dumps_json
from edgeface.quiet import note

BITS = ("w8a8", "w6a6", "mixed")


def parse_layer_bits(text: str | None) -> dict[str, int] | None:
    """'conv1.0=8,conv3=8' -> {'conv1.0': 8, 'conv3': 8}."""
    from edgeface.errors import EdgefaceError

    if not text:
        return None
    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = int(value)
        except ValueError:
            raise EdgefaceError(f"--layer-bits: cannot read '{item}' (use name=bits,name=bits)") from None
    return out


def parse_smooth(text: str) -> float | str | None:
    """'auto' | 'off' | an alpha in [0, 1]."""
    from edgeface.errors import EdgefaceError

    value = text.strip().lower()
    if value in ("auto", "off"):
        return None if value == "off" else "auto"
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:
        raise EdgefaceError(f"--smooth must be auto, off or a number in [0, 1], got '{text}'")
    return alpha


def summary_line(data: dict[str, Any]) -> str:
    r = data["record"]
    parts = [f"quantized {data['model']} -> {data['output']}: {r['bits']} {r['method']}"]
    if r.get("calibration"):
        parts.append(f"calibration {r['calibration']} on {r.get('num_images')} images")
    if r["method"] == "qat":
        parts.append(f"{r['steps']} steps ({r['loss']})")
        if r.get("kept") == "ptq":
            parts.append("QAT lowered the held-out cosine to fp32, so the PTQ weights were kept")
    parts.append(f"{data['size_bytes']:,} bytes (fp32 {data['fp32_bytes']:,}), {data['wall_s']:.0f} s")
    return ", ".join(parts)


def weight_share(counts: Iterable[int], net: Any) -> float:
    """Percent of `net`'s weights that `counts` (weights of some of its modules) add up to."""
    from edgeface.compress.quant.prepare import weight_count

    return 100.0 * sum(counts) / max(weight_count(net), 1)


def float_weights_line(floating: list[tuple[str, str, int]], net: Any) -> str:
    """One line naming the opaque modules whose weights stayed float and their share of the weights."""
    share = weight_share((w for _, _, w in floating), net)
    names = ", ".join(f"{n} ({c})" for n, c, _ in floating[:3])
    more = f" and {len(floating) - 3} more" if len(floating) > 3 else ""
    one = len(floating) == 1
    return (
        f"{names}{more} {'keeps its' if one else 'keep their'} weights float ({share:.0f} % of the model's): "
        f"forward calls {'it' if one else 'each'} as one opaque op (quantize writes out only torch.nn's "
        "own MultiheadAttention without add_bias_kv/add_zero_attn, TransformerEncoder and its layers) "
        "and export keeps it float; call its Linear layers in forward to make them integer"
    )


KEPT_FLOAT_WARN = 10.0  # % of the weights: above it, layers the placement kept float are a warning


def kept_float_line(kept: list[tuple[str, int, str]], share: float) -> str:
    """One line naming the Conv2d/Linear layers the placement kept float, their share, and the first why."""
    names = ", ".join(n for n, _, _ in kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
    return (
        f"{len(kept)} conv/linear layer(s) keep float weights ({share:.0f} % of the model's): {names}; "
        f"{kept[0][0]}: {kept[0][2]}; --json lists them all"
    )


@click.command("quantize")
@model_options
@click.option(
    "--method",
    type=click.Choice(["ptq", "qat"]),
    default="ptq",
    show_default=True,
    help="Post-training calibration only, or quantization-aware training distilled from fp32.",
)
@click.option(
    "--bits",
    default="w8a8",
    show_default=True,
    help="w8a8, w6a6 (int6 on a 6-bit grid stored in int8; first and last weight layers stay at "
    "8 bits) or mixed (per-layer bits chosen by sensitivity for --size-budget).",
)
@click.option(
    "--layer-bits",
    default=None,
    metavar="NAME=BITS,...",
    help="Per-layer overrides, e.g. conv1.0=8,conv3=8 (layer names: see --plan output), or per layer "
    "class, e.g. Linear=7 (a named layer's own entry wins).",
)
@click.option(
    "--size-budget",
    default=None,
    type=SIZE_BUDGET,
    help="For --bits mixed: bytes (300000, 300KB) or a ratio of the fp32 size (0.2).",
)
@click.option(
    "--calib",
    "calib_dir",
    required=True,
    type=click.Path(),
    help="Calibration / training images: an LFW root (compression split only) or any folder.",
)
@click.option(
    "--calibration",
    type=click.Choice(["minmax", "percentile", "mse"]),
    default="mse",
    show_default=True,
    help="How activation ranges are set from the calibration images.",
)
@click.option("--num-images", default=512, show_default=True, type=Count(1), help="Calibration images used.")
@click.option(
    "--keep-float",
    "keep_float",
    multiple=True,
    metavar="NAME",
    help="Leave a layer (module path, with everything inside it), a graph node or an op type (e.g. "
    "matmul, Linear) in float; repeatable. The error message of a failing layer names what to pass.",
)
@click.option(
    "--fallback",
    default=4.0,
    show_default=True,
    type=FiniteFloat(0.0, 1e6),
    help="Leave float the int8 layers fed by a float op (LayerNorm, GELU, ...) whose input quantizer alone "
    "causes at least this many times the mean measured loss per quantizer (0 = off; PTQ/QAT, not mixed).",
)
@click.option(
    "--smooth",
    default="auto",
    show_default=True,
    metavar="auto|off|ALPHA",
    help="Migrate outlier channels of the float tensors that feed int8 layers (LayerNorm / GELU outputs) "
    "into those layers' weights: 'auto' picks the strength per site by measured layer error, ALPHA in "
    "[0, 1] fixes SmoothQuant's alpha, 'off' disables it. No effect on plain CNNs.",
)
@click.option(
    "--loss",
    type=click.Choice(["cosine", "ekd", "cosine+ekd"]),
    default="cosine",
    show_default=True,
    help="QAT distillation loss (label-free).",
)
@click.option(
    "--epochs", default=1, show_default=True, type=Count(1, 100_000), help="QAT epochs over --calib."
)
@click.option("--max-steps", default=None, type=Count(1), help="Cap on QAT steps.")
@click.option(
    "--max-minutes",
    default=None,
    type=MINUTES,
    help="Wall-clock budget of QAT training; the learning-rate schedule ends with it.",
)
@click.option(
    "--lr",
    default=None,
    type=LEARNING_RATE,
    help="QAT learning rate (AdamW); default 1e-5 with 8-bit weights, 5e-5 for w6a6 / mixed.",
)
@click.option("--batch-size", default=32, show_default=True, type=BATCH, help="QAT batch size per process.")
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="Quantized checkpoint (.pt)."
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the quantization plan (every scale and zero point) as JSON.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a compression report (OUT.md + OUT.json) against the fp32 model on LFW folds 6-10.",
)
@click.option(
    "--lfw",
    "lfw_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="LFW root for --report (default: --calib when it is an LFW root).",
)
@click.option("--quiet", is_flag=True, help="No progress bars and no `note:` lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def quantize_cmd(
    model: str,
    weights: str | None,
    spec_file: str | None,
    method: str,
    bits: str,
    layer_bits: str | None,
    size_budget: str | None,
    calib_dir: str,
    calibration: str,
    num_images: int,
    keep_float: tuple[str, ...],
    fallback: float,
    smooth: str,
    loss: str,
    epochs: int,
    max_steps: int | None,
    max_minutes: float | None,
    lr: float | None,
    batch_size: int,
    output: str,
    plan_path: str | None,
    report_path: str | None,
    lfw_dir: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Quantize a model (fake-quant, BN folded) and save it with its spec and recipe."""
    import time

    from edgeface.errors import EdgefaceError

    # cheap checks first: a typo must not cost a model load
    bits = bits.lower()
    if bits not in BITS:
        raise EdgefaceError(f"unsupported --bits '{bits}': choose one of {', '.join(BITS)}")
    if bits == "mixed" and not size_budget:
        raise EdgefaceError("--bits mixed needs --size-budget (bytes or a ratio of the fp32 size)")
    if (
        num_images < 1
        or batch_size < 1
        or epochs < 1
        or (lr is not None and not (0 < lr < 1e3))
        or (max_steps is not None and max_steps < 1)
    ):
        raise EdgefaceError("--num-images, --batch-size, --epochs, --max-steps must be >= 1 and --lr > 0")
    alpha = parse_smooth(smooth)
    if not 0.0 <= fallback <= 1e6:
        raise EdgefaceError(f"--fallback must be a factor >= 0 (0 = off), got {fallback}")
    if max_minutes is not None and not (0 < max_minutes < 1e6):
        raise EdgefaceError(f"--max-minutes must be > 0, got {max_minutes}")
    keep = [k.strip() for k in keep_float if k.strip()]
    overrides = parse_layer_bits(layer_bits)
    out = Path(output)
    for p in (out, Path(plan_path) if plan_path else None, Path(report_path) if report_path else None):
        if p is not None and not p.resolve().parent.is_dir():
            raise EdgefaceError(f"output folder does not exist: {p.parent}")

    from edgeface.data.folders import compression_images
    from edgeface.data.lfw import is_lfw_root

    images = compression_images(calib_dir)
    lfw_root = Path(lfw_dir) if lfw_dir else (Path(calib_dir) if is_lfw_root(Path(calib_dir)) else None)
    if report_path and (lfw_root is None or not is_lfw_root(lfw_root)):
        raise EdgefaceError("--report needs an LFW root (pairs.txt + aligned112/): give --lfw DIR")

    from edgeface.compress.quant import mixed_precision, model_size_bytes, ptq, qat, quant_plan
    from edgeface.compress.quant.plan import float_weight_layers
    from edgeface.compress.quant.prepare import opaque_weight_modules
    from edgeface.models.loading import load_model

    rank, world = join_distributed()
    progress = not quiet and rank == 0
    if quiet:
        from edgeface.quiet import silence_notes

        silence_notes()
    start, cpu_start = time.perf_counter(), time.process_time()
    loaded = load_model(model, weights, spec_file)
    if loaded.checkpoint is not None and any(
        t.get("kind") == "quant" for t in loaded.checkpoint["transforms"]
    ):
        raise EdgefaceError(f"{weights} is already quantized; quantize its float parent instead")
    net, spec = loaded.model, loaded.spec
    mixed_report = None
    qmodel = None
    if bits == "mixed":
        qmodel, mixed_report = mixed_precision(
            net,
            spec,
            images,
            size_budget,
            calibration=calibration,
            num_images=num_images,
            layer_bits=overrides,
            progress=progress,
            keep_float=keep,
            smooth=alpha,
        )
    if method == "qat":
        qmodel, _ = qat(
            net,
            spec,
            images,
            bits=bits,
            loss=loss,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_steps=max_steps,
            calibration=calibration,
            num_images=num_images,
            layer_bits=overrides,
            progress=progress,
            qmodel=qmodel,
            max_seconds=max_minutes * 60 if max_minutes else None,
            keep_float=keep,
            smooth=alpha,
            fallback=fallback,
        )
    elif qmodel is None:
        qmodel = ptq(
            net,
            spec,
            images,
            bits=bits,
            calibration=calibration,
            num_images=num_images,
            layer_bits=overrides,
            progress=progress,
            keep_float=keep,
            smooth=alpha,
            fallback=fallback,
        )
    wall = time.perf_counter() - start
    record = dict(qmodel.edgeface_quant)
    record["wall_s"] = round(wall, 2)
    # CPU seconds of all threads: on a shared machine the wall time measures the neighbours too
    record["cpu_s"] = round(time.process_time() - cpu_start, 2)
    qmodel.edgeface_quant = record
    plan = quant_plan(qmodel)
    data: dict[str, Any] = {
        "model": model,
        "weights": weights,
        "output": str(out),
        "record": record,
        "size_bytes": model_size_bytes(qmodel),
        "fp32_bytes": model_size_bytes(net),
        "wall_s": round(wall, 2),
    }
    if mixed_report:
        data["mixed"] = {k: v for k, v in mixed_report.items() if k != "sensitivity"}
    floating = opaque_weight_modules(qmodel)
    data["opaque_float_modules"] = [{"name": n, "class": c, "weights": w} for n, c, w in floating]
    kept = float_weight_layers(qmodel)
    data["float_weight_layers"] = [{"name": n, "weights": w, "why": why} for n, w, why in kept]
    if rank == 0:
        save_quantized(out, qmodel, spec, model, loaded.checkpoint, plan)
        if plan_path:
            from edgeface.eval.lfw_eval import write_json

            write_json(plan, plan_path)
        if report_path:
            from edgeface.compress.report import compression_report, write_report

            rep = compression_report(
                loaded,
                qmodel,
                spec_for(qmodel, spec, plan),
                lfw_root,
                wall_s=wall,
                title=f"{model} {bits} {method}",
                progress=progress,
            )
            data["report"] = [str(p) for p in write_report(rep, report_path)]
        if floating:
            click.echo(f"warning: {float_weights_line(floating, net)}", err=True)
        if kept:  # a small share is the placement's usual choice (convs before LayerNorm): a note
            share = weight_share((w for _, w, _ in kept), net)
            line = kept_float_line(kept, share)
            if share >= KEPT_FLOAT_WARN:
                click.echo(f"warning: {line}", err=True)
            else:
                note(line)
        click.echo(dumps_json(data) if as_json else summary_line(data))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def spec_for(qmodel: Any, spec: Any, plan: dict[str, Any]) -> Any:
    """The compressed model's spec: precision, per-layer bits, and the int8 input/output quantization."""
    from edgeface.spec import TensorQuant

    record = plan["record"] or {}
    precision = record.get("bits") if record.get("bits") in ("w8a8", "w6a6", "mixed") else "mixed"
    weights = record.get("plan", {}).get("weights", {})

    def tq(name: str | None) -> TensorQuant | None:
        if not name:
            return None
        q = plan["quantizers"][name]
        return (
            TensorQuant(scale=q["scale"], zero_point=q["zero_point"], dtype="int8")
            if q["bits"] == 8
            else None
        )

    return spec.replace(
        precision=precision,
        layer_bits=dict(weights),
        weight_quant=f"symmetric per output channel (axis 0), {precision}",
        input_quant=tq(plan["input_quantizer"]),
        output_quant=tq(plan["output_quantizer"]),
        provenance={**spec.provenance, "quantization": {k: v for k, v in record.items() if k != "plan"}},
    )


def save_quantized(
    out: Path, qmodel: Any, spec: Any, model: str, parent: dict[str, Any] | None, plan: dict[str, Any]
) -> None:
    """Save atomically, keeping an already-compressed parent's transform history (e.g. pruning)."""
    from edgeface.models.checkpoint import save

    base, transforms = model, []
    if parent is not None:
        base, transforms = parent["model"], list(parent.get("transforms", []))
    transforms.append(dict(qmodel.edgeface_quant))
    save(out, qmodel, spec_for(qmodel, spec, plan), base_model=base, transforms=transforms)
