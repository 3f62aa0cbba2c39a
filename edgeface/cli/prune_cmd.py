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
    join_distributed,
    model_options,
)
from edgeface.io import atomic_write_text, dumps_json


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
    for ft in data["finetune"]:
        lines.append(
            f"  fine-tune after step {ft['after_step']}: {ft['steps']} steps ({ft['loss']}), "
            f"final loss {ft['final_loss']:.4f}, {ft['wall_s']:.0f} s"
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
    "--ratio", "-r", required=True, type=PROBABILITY_OPEN, help="Fraction of filters to remove, in (0, 1)."
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
    type=click.Choice(["cosine", "ekd", "cosine+ekd"]),
    default="cosine",
    show_default=True,
    help="Distillation loss against the unpruned model.",
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
) -> None:
    """Remove whole filters (Torch-Pruning DepGraph), fine-tune by distillation, save a checkpoint that
    `--weights` of eval, export, quantize and prune accept."""
    from edgeface.errors import EdgefaceError

    # Cheap checks first: a typo must not cost a model load.
    if not 0.0 < ratio < 1.0:
        raise EdgefaceError(f"--ratio must be in (0, 1) (the fraction of filters to remove), got {ratio}")
    if steps < 1:
        raise EdgefaceError(f"--steps must be >= 1, got {steps}")
    if finetune_epochs < 0 or (max_steps is not None and max_steps < 1) or batch_size < 1 or lr <= 0:
        raise EdgefaceError("--finetune-epochs must be >= 0, --max-steps/--batch-size >= 1 and --lr > 0")
    out = Path(output)
    for p in (out, Path(report_path) if report_path else None):
        if p is not None and not p.resolve().parent.is_dir():
            raise EdgefaceError(f"output folder does not exist: {p.parent}")
    if (finetune_epochs > 0 or importance == "taylor") and data_dir is None:
        raise EdgefaceError("--data DIR is needed for fine-tuning and for Taylor importance")

    from edgeface.data.lfw import is_lfw_root

    if lfw_dir is not None and not is_lfw_root(Path(lfw_dir)):
        raise EdgefaceError(f"--lfw {lfw_dir}: not an LFW root (expected pairs.txt and aligned112/)")

    import copy
    import time

    from edgeface.data.folders import compression_images
    from edgeface.models.checkpoint import save
    from edgeface.models.loading import load_model

    rank, world = join_distributed()  # under torchrun every rank prunes identically, fine-tunes its shard
    images = compression_images(data_dir) if data_dir is not None else None
    loaded = load_model(model, weights, spec_file)
    net, spec = loaded.model, loaded.spec
    teacher = copy.deepcopy(net).eval()

    from edgeface.compress.distill import distill
    from edgeface.compress.prune import prune_model

    finetune: list[dict[str, Any]] = []
    after_step = None
    if finetune_epochs > 0 and images is not None:
        world_batches = max(1, len(images) // (batch_size * world))
        total = (
            world_batches * finetune_epochs
            if max_steps is None
            else min(max_steps, world_batches * finetune_epochs)
        )
        per_step = max(1, total // steps)

        def after_step(k: int, student: Any) -> None:
            stats = distill(
                student,
                teacher,
                images,
                spec,
                loss=loss,
                epochs=finetune_epochs,
                lr=lr,
                batch_size=batch_size,
                max_steps=per_step,
                seed=seed + k,
                max_seconds=max_minutes * 60 / steps if max_minutes else None,
                progress=rank == 0,
            )
            finetune.append({"after_step": k + 1, **stats})

    started = time.perf_counter()
    result = prune_model(
        net,
        spec,
        ratio,
        importance=importance,
        global_pruning=global_pruning,
        steps=steps,
        protect=protect,
        progress=rank == 0,
        grad_images=images,
        teacher=teacher,
        after_step=after_step,
    )
    net.eval()
    if rank != 0:  # one writer: rank 0 holds the same weights as every other rank
        return
    base = model
    transforms: list[dict[str, Any]] = []
    if loaded.checkpoint is not None:  # pruning an already compressed model: keep its history
        base = loaded.checkpoint["model"]
        transforms = list(loaded.checkpoint.get("transforms", []))
    record = {**result.record, "finetune": list(finetune)}
    transforms.append(record)
    provenance = {
        **spec.provenance,
        "pruned": {"ratio": ratio, "macs": result.macs_after, "params": result.params_after},
    }
    spec = spec.replace(provenance=provenance)
    save(out, net, spec, base_model=base, transforms=transforms)

    data = {
        "model": model,
        "weights": weights,
        "output": str(out),
        "settings": {
            "ratio": ratio,
            "importance": importance,
            "global": global_pruning,
            "steps": steps,
            "loss": loss,
            "finetune_epochs": finetune_epochs,
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "data": data_dir,
            "images": len(images) if images else 0,
        },
        "prune": result.to_dict(),
        "finetune": finetune,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if report_path is not None:
        _write_report(Path(report_path), data, lfw_dir or data_dir, teacher, loaded.spec, net, spec)
    click.echo(dumps_json(data) if as_json else format_summary(data))
