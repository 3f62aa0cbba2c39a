"""`edgeface prune`: structured filter pruning, optional distillation fine-tune, a reloadable checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeface.cli.options import (
    BATCH,
    LEARNING_RATE,
    MINUTES,
    PROBABILITY_OPEN,
    SEED,
    Count,
    FiniteFloat,
    join_distributed,
    model_options,
)
from edgeface.io import atomic_write_text, dumps_json


def _stderr(msg: str) -> None:
    click.echo(msg, err=True)  # progress; stdout stays the summary (or pure JSON with --json)


def _fingerprint(model: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def format_summary(data: dict[str, Any]) -> str:
    p = data["prune"]
    lines = [
        f"pruned {data['model']}: ratio {data['settings']['ratio']} ({data['settings']['importance']}, "
        f"{'global' if data['settings']['global'] else 'per-layer'}, {data['settings']['steps']} step(s))",
        f"  {'':<8}{'before':>10}{'after':>10}{'change':>10}",
        f"  {'MACs':<8}{_fmt(p['macs_before']):>10}{_fmt(p['macs_after']):>10}"
        f"{-p['macs_reduction'] * 100:>9.1f}%",
        f"  {'params':<8}{_fmt(p['params_before']):>10}{_fmt(p['params_after']):>10}"
        f"{-p['params_reduction'] * 100:>9.1f}%",
        f"  protected: {', '.join(p['protected']) or 'none'}",
    ]
    left = p.get("left_whole") or []
    if left:
        lines.append(f"  left whole ({len(left)} group(s)):")
        lines += [f"    {g['layer']}: {g['reason']}" for g in left[:12]]
        if len(left) > 12:
            lines.append(f"    ... and {len(left) - 12} more (--json lists all)")
    b = data.get("budget")
    if b:
        if "target_macs" in b:
            goal = f"{b['target_macs'] / 1e6:.1f} M MACs"
        else:
            goal = f"{b['target_latency_ms']} ms ({b['runtime']} {b['precision']}, "
            goal += f"unpruned {b['unpruned_ms']} ms, now {b['final_ms']} ms)"
        met = "met" if b["met"] else "NOT met"
        lines.append(f"  budget {goal}: ratio {data['settings']['ratio']:.3f}, {met}")
    for ft in data["finetune"]:
        val = (ft.get("val") or [{}])[-1]
        extra = f", cosine to the unpruned model {val['cos']:.4f}" if "cos" in val else ""
        lines.append(
            f"  fine-tune after step {ft['after_step']}: {ft['steps']} steps ({ft['loss']}), "
            f"final loss {ft['final_loss']:.4f}{extra}, {ft['wall_s']:.0f} s"
        )
    if not data["finetune"]:
        lines.append("  no fine-tune (give --data and --finetune-epochs to recover accuracy by distillation)")
    lines.append(f"saved: {data['output']}")
    return "\n".join(lines)


def _markdown(data: dict[str, Any]) -> str:
    p, s = data["prune"], data["settings"]
    rows = [
        f"# Pruning report: {data['model']}",
        "",
        f"ratio {s['ratio']}, importance {s['importance']}, {'global' if s['global'] else 'per-layer'}, "
        f"{s['steps']} step(s); protected: {', '.join(p['protected'])}",
        "",
        "| | before | after | change |",
        "|---|---:|---:|---:|",
        f"| MACs | {p['macs_before']:,} | {p['macs_after']:,} | {-p['macs_reduction'] * 100:.1f} % |",
        f"| parameters | {p['params_before']:,} | {p['params_after']:,} "
        f"| {-p['params_reduction'] * 100:.1f} % |",
        "",
    ]
    for ft in data["finetune"]:
        rows.append(
            f"- fine-tune after step {ft['after_step']}: {ft['steps']} steps, loss {ft['loss']}, "
            f"final loss {ft['final_loss']:.4f}, {ft['wall_s']:.0f} s"
        )
    rows.append(f"\noutput: `{data['output']}`\n")
    return "\n".join(rows)


def _write_report(
    path: Path, data: dict[str, Any], lfw: str | None, teacher: Any, teacher_spec: Any, pruned: Any, spec: Any
) -> None:
    """With an LFW root, the project's compression report (accuracy, TAR@FAR, per-group rates of both
    models on folds 6-10); without one, only what pruning itself measured (parameters, MACs)."""
    from edgeface.data.lfw import is_lfw_root

    if lfw is None or not is_lfw_root(Path(lfw)):
        atomic_write_text(path, _markdown(data))
        return
    import shlex
    import sys

    from edgeface.compress.report import compression_report, write_report
    from edgeface.models.loading import LoadedModel

    argv = sys.argv[1:] if sys.argv[1:2] == ["prune"] else ["prune", "..."]
    report = compression_report(
        LoadedModel(teacher, teacher_spec),
        pruned,
        spec,
        lfw,
        wall_s=data.get("wall_s"),
        title="pruned",
        command="edgeface " + shlex.join(argv),
    )
    report["prune"] = data["prune"]
    write_report(report, path)


@click.command("prune")
@model_options
@click.option(
    "--ratio",
    "-r",
    default=None,
    type=PROBABILITY_OPEN,
    help="Fraction of filters to remove, in (0, 1) (or give a --target-*).",
)
@click.option(
    "--importance",
    type=click.Choice(["l1", "l2", "bn", "taylor"]),
    default="l2",
    show_default=True,
    help="Filter ranking: weight magnitude (L1/L2), BatchNorm scale, or first-order Taylor.",
)
@click.option(
    "--global/--per-layer",
    "global_pruning",
    default=False,
    show_default=True,
    help="Rank filters across the whole network, or remove the same fraction in every layer.",
)
@click.option(
    "--steps",
    default=1,
    show_default=True,
    type=Count(1, 1000),
    help="Iterative schedule: prune in N equal increments, fine-tuning after each.",
)
@click.option(
    "--protect",
    multiple=True,
    metavar="NAME",
    help="Module (and everything inside it) to leave unpruned; repeatable. Stem and embedding head "
    "are always protected.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Fine-tune images: an LFW root (uses only the compression split) or any image folder.",
)
@click.option(
    "--finetune-epochs",
    default=0,
    show_default=True,
    type=Count(0, 100_000),
    help="Distillation epochs over --data (split across --steps); 0 = no fine-tune.",
)
@click.option(
    "--max-steps", default=None, type=Count(1), help="Cap on total fine-tune steps (all increments)."
)
@click.option(
    "--max-minutes",
    default=None,
    type=MINUTES,
    help="Wall-clock budget of the whole fine-tune; the learning-rate schedule ends with it.",
)
@click.option(
    "--loss",
    type=click.Choice(["cosine", "relation", "cosine+relation", "ekd", "cosine+ekd"]),
    default="cosine",
    show_default=True,
    help="Distillation loss against the unpruned model (cosine kept TAR@FAR=1e-3 best of the four measured "
    "on one budget: docs/prune_recipes.md).",
)
@click.option(
    "--lr", default=5e-4, show_default=True, type=LEARNING_RATE, help="Fine-tune learning rate (AdamW)."
)
@click.option("--batch-size", default=64, show_default=True, type=BATCH)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="Pruned checkpoint (.pt)."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Markdown report: parameters and MACs before/after; with an LFW root (--lfw, or --data) the "
    "compression report of both models on folds 6-10 (OUT.md + OUT.json).",
)
@click.option(
    "--lfw",
    "lfw_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="LFW root: with --report, also evaluate both models on folds 6-10 (default: --data when "
    "it is an LFW root).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
# --- budgets, structure defaults, recovery recipe, resume (issue 14) ---
@click.option(
    "--target-macs",
    default=None,
    help="Prune until the model needs at most this many MACs: a count (150M, 1.5e8) or a ratio of the "
    "original (0.65). Replaces --ratio.",
)
@click.option(
    "--target-latency-ms",
    default=None,
    type=FiniteFloat(0.0, 1e6, min_open=True),
    help="Prune until the exported artifact runs in at most this many ms (batch 1, one thread) on --on, "
    "measured on this machine. Replaces --ratio; needs --data for the export's calibration.",
)
@click.option(
    "--on",
    "runtime",
    type=click.Choice(["onnxruntime", "litert"]),
    default="onnxruntime",
    show_default=True,
    help="Runtime that --target-latency-ms is measured in.",
)
@click.option(
    "--latency-precision",
    type=click.Choice(["int8", "fp32"]),
    default="int8",
    show_default=True,
    help="Precision of the artifact timed for --target-latency-ms.",
)
@click.option(
    "--round-to",
    default=8,
    show_default=True,
    type=Count(1, 256),
    help="Keep every pruned group's width a multiple of this (int8 kernels pack channels in 4-16s).",
)
@click.option(
    "--scope",
    type=click.Choice(["all", "inner"]),
    default="all",
    show_default=True,
    help="all: every prunable group; inner: only channels private to a block (residual streams keep "
    "their width).",
)
@click.option(
    "--augment",
    type=click.Choice(["basic", "strong"]),
    default="basic",
    show_default=True,
    help="Fine-tune views: basic (mirror, shift) or strong (+ crop jitter, colour, blur).",
)
@click.option(
    "--schedule",
    type=click.Choice(["cosine", "linear", "constant"]),
    default="cosine",
    show_default=True,
    help="Learning-rate schedule of the fine-tune.",
)
@click.option(
    "--warmup",
    default=0.0,
    show_default=True,
    type=FiniteFloat(0.0, 1.0, max_open=True),
    help="Warm-up fraction of the fine-tune.",
)
@click.option(
    "--freeze-bn/--train-bn",
    default=False,
    show_default=True,
    help="Keep BatchNorm statistics fixed while fine-tuning (they are re-estimated after every cut).",
)
@click.option(
    "--val-every",
    default=50,
    show_default=True,
    type=Count(1),
    help="Show the cosine to the unpruned model on 128 --data faces every N fine-tune steps.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Save progress to OUT.resume/ and continue an interrupted run of the same command.",
)
def prune_cmd(
    model: str,
    weights: str | None,
    spec_file: str | None,
    ratio: float,
    importance: str,
    global_pruning: bool,
    steps: int,
    protect: tuple[str, ...],
    data_dir: str | None,
    finetune_epochs: int,
    max_steps: int | None,
    max_minutes: float | None,
    loss: str,
    lr: float,
    batch_size: int,
    seed: int,
    output: str,
    report_path: str | None,
    lfw_dir: str | None,
    as_json: bool,
    target_macs: str | None,
    target_latency_ms: float | None,
    runtime: str,
    latency_precision: str,
    round_to: int,
    scope: str,
    augment: str,
    schedule: str,
    warmup: float,
    freeze_bn: bool,
    val_every: int,
    resume: bool,
) -> None:
    """Remove whole filters (Torch-Pruning DepGraph), fine-tune by distillation, save a checkpoint that
    `--weights` of eval, export, quantize and prune accept."""
    from edgeface.errors import EdgefaceError

    # Cheap checks first: a typo must not cost a model load.
    targets = [x for x in (ratio, target_macs, target_latency_ms) if x is not None]
    if len(targets) != 1:
        raise EdgefaceError("give exactly one of --ratio, --target-macs, --target-latency-ms")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise EdgefaceError(f"--ratio must be in (0, 1) (the fraction of filters to remove), got {ratio}")
    if target_macs is not None:  # the syntax now; against the model's own count once it is loaded
        from edgeface.compress.budget import parse_macs

        parse_macs(target_macs, 2**62)
    if target_latency_ms is not None and not (0.0 < target_latency_ms < 1e6):
        raise EdgefaceError(
            f"--target-latency-ms must be a positive number of milliseconds, got {target_latency_ms}"
        )
    if steps < 1:
        raise EdgefaceError(f"--steps must be >= 1, got {steps}")
    if finetune_epochs < 0 or (max_steps is not None and max_steps < 1) or batch_size < 1 or lr <= 0:
        raise EdgefaceError("--finetune-epochs must be >= 0, --max-steps/--batch-size >= 1 and --lr > 0")
    if max_minutes is not None and not 0 < max_minutes < 1e6:
        raise EdgefaceError(f"--max-minutes must be a positive number, got {max_minutes}")
    if not 1 <= round_to <= 256 or not 1 <= val_every or not 0.0 <= warmup < 1.0:
        raise EdgefaceError("--round-to must be in [1, 256], --val-every >= 1 and --warmup in [0, 1)")
    out = Path(output)
    for p in (out, Path(report_path) if report_path else None):
        if p is not None and not p.resolve().parent.is_dir():
            raise EdgefaceError(f"output folder does not exist: {p.parent}")
    if (finetune_epochs > 0 or importance == "taylor" or target_latency_ms is not None) and data_dir is None:
        raise EdgefaceError("--data DIR is needed for fine-tuning, Taylor importance and --target-latency-ms")

    from edgeface.data.lfw import is_lfw_root

    if lfw_dir is not None and not is_lfw_root(Path(lfw_dir)):
        raise EdgefaceError(f"--lfw {lfw_dir}: not an LFW root (expected pairs.txt and aligned112/)")

    import copy
    import time

    from edgeface.compress.recipe import Finetune, clear, run_prune
    from edgeface.data.folders import compression_images
    from edgeface.models.checkpoint import save
    from edgeface.models.loading import load_model

    rank, world = join_distributed()  # under torchrun every rank prunes identically, fine-tunes its shard
    images = compression_images(data_dir) if data_dir is not None else None
    if target_latency_ms is not None and images is not None:
        from edgeface.compress.budget import MIN_LATENCY_IMAGES

        if len(images) < MIN_LATENCY_IMAGES:
            raise EdgefaceError(
                f"--data has {len(images)} images; --target-latency-ms exports every candidate, which "
                f"needs at least {MIN_LATENCY_IMAGES} faces (calibration, threshold and parity)"
            )
    loaded = load_model(model, weights, spec_file)
    net, spec = loaded.model, loaded.spec
    teacher = copy.deepcopy(net).eval()
    base = model
    transforms: list[dict[str, Any]] = []
    if loaded.checkpoint is not None:  # pruning an already compressed model: keep its history
        base = loaded.checkpoint["model"]
        transforms = list(loaded.checkpoint.get("transforms", []))

    prune_kwargs: dict[str, Any] = {
        "importance": importance,
        "global_pruning": global_pruning,
        "protect": protect,
        "round_to": round_to,
        "scope": scope,
    }
    budget: dict[str, Any] = {}
    resolve: Any = ratio
    if ratio is None:
        from edgeface.compress import budget as budgets
        from edgeface.compress.prune import count_macs_params

        if target_macs is not None:
            goal = float(budgets.parse_macs(target_macs, count_macs_params(net, spec)[0]))
            measure, budget = budgets.macs_measure(spec), {"target_macs": int(goal)}
        else:
            assert target_latency_ms is not None and data_dir is not None
            goal = target_latency_ms
            measure = budgets.LatencyMeasure(
                model,
                spec,
                runtime,
                latency_precision,
                data_dir,
                base_model=base,
                prior_transforms=transforms,
            )
            budget = {"target_latency_ms": goal, "runtime": runtime, "precision": latency_precision}
            budget["unpruned_ms"] = round(measure(net), 3)
            if budget["unpruned_ms"] <= goal:
                raise EdgefaceError(
                    f"--target-latency-ms {goal:g}: the unpruned model already runs in "
                    f"{budget['unpruned_ms']:g} ms on {runtime} ({latency_precision}); nothing to prune"
                )

        def resolve() -> float:
            found, probes = budgets.search_ratio(
                net, spec, measure, goal, prune_kwargs, progress=_stderr if rank == 0 else None
            )
            budget.update(ratio=found, probes=probes)
            return found

    finetune = None
    if finetune_epochs > 0:
        finetune = Finetune(
            epochs=finetune_epochs,
            loss=loss,
            lr=lr,
            batch_size=batch_size,
            max_steps=max_steps,
            max_minutes=max_minutes,
            seed=seed,
            augmentation=augment,
            schedule=schedule,
            warmup=warmup,
            freeze_bn=freeze_bn,
            val_every=val_every,
        )
    resume_dir = out.parent / f"{out.name}.resume" if resume and finetune is not None else None
    settings = {
        "model": model,
        "weights": [weights, _fingerprint(teacher)],  # the teacher must be the same model, not the same path
        "target": [ratio, target_macs, target_latency_ms, runtime, latency_precision],
        "data": [data_dir, len(images) if images else 0],
        "world": world,
        **{k: v for k, v in prune_kwargs.items() if k != "protect"},
        "protect": list(protect),
        "finetune": None if finetune is None else finetune.__dict__,
    }
    started = time.perf_counter()
    result, finetune_stats = run_prune(
        net,
        teacher,
        spec,
        images,
        resolve,
        settings,
        finetune=finetune,
        resume_dir=resume_dir,
        rank=rank,
        progress=True,
        steps=steps,
        **prune_kwargs,
    )
    net.eval()
    final_ratio = result.record["ratio"]
    if target_latency_ms is not None:
        budget["final_ms"] = round(measure(net), 3) if rank == 0 else None
        budget["met"] = budget["final_ms"] is not None and budget["final_ms"] <= target_latency_ms
    if target_macs is not None:
        budget["met"] = result.macs_after <= budget["target_macs"]
    if rank != 0:  # one writer: rank 0 holds the same weights as every other rank
        return
    record = {**result.record, "budget": budget or None}
    transforms.append(record)
    provenance = {
        **spec.provenance,
        "pruned": {"ratio": final_ratio, "macs": result.macs_after, "params": result.params_after},
    }
    spec = spec.replace(provenance=provenance)
    save(out, net, spec, base_model=base, transforms=transforms)

    data = {
        "model": model,
        "weights": weights,
        "output": str(out),
        "settings": {
            "ratio": final_ratio,
            "importance": importance,
            "global": global_pruning,
            "steps": steps,
            "round_to": round_to,
            "scope": scope,
            "loss": loss,
            "augment": augment,
            "schedule": schedule,
            "lr": lr,
            "batch_size": batch_size,
            "finetune_epochs": finetune_epochs,
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "data": data_dir,
            "images": len(images) if images else 0,
        },
        "budget": budget or None,
        "prune": result.to_dict(),
        "finetune": finetune_stats,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if report_path is not None:
        _write_report(Path(report_path), data, lfw_dir or data_dir, teacher, loaded.spec, net, spec)
    clear(resume_dir)
    click.echo(dumps_json(data) if as_json else format_summary(data))
