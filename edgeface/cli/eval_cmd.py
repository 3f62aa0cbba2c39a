"""`edgeface eval`: LFW-protocol verification of a PyTorch model, with per-group rates and a ROC plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeface.cli.options import BATCH, model_options
from edgeface.io import emit, printable


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f} %"


def _rate_cell(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['rate'] * 100:5.2f} % [{lo * 100:.2f}, {hi * 100:.2f}]"


def format_report(report: Any, header: str) -> str:
    """The human table: percent here, fractions in the JSON."""
    lines = [
        header,
        f"  accuracy        {report.acc * 100:.2f} % ± {report.acc_std * 100:.2f}"
        f"  (k-fold, {report.n_pairs} pairs)",
    ]
    for key, tar in report.tar_at_far.items():
        lines.append(f"  TAR@FAR={key}   {_pct(tar)}")
    lines.append(f"  threshold       {report.threshold:.4f}  (cosine, best on all pairs)")
    g = report.groups
    if g:
        lines += [
            "",
            f"per group at threshold {g['threshold']:.4f} (rate [95 % Wilson CI], in %)",
            f"  {'group':<8}{'genuine':>8}  {'FNMR':<26}{'impostor':>8}  {'FMR':<26}",
        ]
        for name, r in g["groups"].items():
            fnmr, fmr = r["fnmr"], r["fmr"]
            lines.append(
                f"  {name:<8}{fnmr['n']:>8}  {_rate_cell(fnmr):<26}{fmr['n']:>8}  {_rate_cell(fmr):<26}"
            )
        gap = g["gap"]
        fn = "n/a" if gap["fnmr"] is None else f"{gap['fnmr'] * 100:.2f} pp"
        fm = "n/a" if gap["fmr"] is None else f"{gap['fmr'] * 100:.2f} pp"
        lines.append(f"  {'gap':<8}{'':>8}  {fn:<26}{'':>8}  {fm:<26}")
        u = g["unlabelled"]
        lines.append(
            f"  excluded: {u['genuine']} genuine + {u['impostor']} impostor pairs with an unlabelled "
            "identity, "
            f"{g['cross_group_impostor']} cross-group impostor pairs"
        )
    return "\n".join(lines)


@click.command("eval")
@model_options
@click.option(
    "--pairs", required=True, type=click.Path(dir_okay=False), help="LFW pairs.txt (View 2 format)."
)
@click.option(
    "--images", required=True, type=click.Path(file_okay=False), help="Aligned LFW folder (aligned112/)."
)
@click.option("--folds", default="6-10", show_default=True, help="Folds to evaluate, e.g. 6-10 or 1,3,5.")
@click.option("--flip", is_flag=True, help="Embed each image plus its mirror (standard LFW test-time flip).")
@click.option(
    "--groups",
    "groups_csv",
    type=click.Path(dir_okay=False),
    default=None,
    help="identity,group CSV for per-group FNMR/FMR (e.g. gender.csv).",
)
@click.option(
    "--roc",
    "roc_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="ROC curve PNG [default: next to --json as <name>.roc.png].",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write the report as JSON to this file ('-' = stdout, then no table is printed).",
)
@click.option("--batch-size", default=64, show_default=True, type=BATCH)
def eval_cmd(
    model: str,
    weights: str | None,
    spec_file: str | None,
    pairs: str,
    images: str,
    folds: str,
    flip: bool,
    groups_csv: str | None,
    roc_path: str | None,
    json_path: str | None,
    batch_size: int,
) -> None:
    """Verify a model on LFW pairs: k-fold accuracy, TAR@FAR, per-group rates, ROC.

    Accuracy picks each fold's threshold on the other folds (LFW protocol); TAR@FAR and the per-group
    rates use all selected pairs. Fractions in the JSON, percent in the table.
    """
    from edgeface.data.lfw import parse_folds, read_pairs, select_folds
    from edgeface.eval.groups import read_groups
    from edgeface.eval.lfw_eval import evaluate_lfw
    from edgeface.eval.plots import roc_png
    from edgeface.io import atomic_write_all, check_output_file, dumps_json

    # Cheap checks first: a typo must not cost a model load and an embedding pass.
    all_pairs = read_pairs(pairs)
    fold_ids = parse_folds(folds, available=max(p.fold for p in all_pairs))  # bounded before expanding
    select_folds(all_pairs, fold_ids)
    if groups_csv is not None:
        read_groups(groups_csv)
    if roc_path is None and json_path not in (None, "-"):
        roc_path = str(Path(json_path).with_suffix("")) + ".roc.png"
    for out in (json_path, roc_path):
        if out not in (None, "-"):
            check_output_file(out)  # a missing, read-only or file-blocked folder fails before the model loads

    import torch

    from edgeface.eval.embed import torch_embedder
    from edgeface.models.loading import load_model

    loaded = load_model(model, weights, spec_file)
    # Same numbers (|diff| ~ 1e-6), ~1.6x faster on CPU: oneDNN runs depthwise/1x1 convs best in NHWC.
    loaded.model.to(memory_format=torch.channels_last)
    embedder = torch_embedder(
        loaded.model, loaded.spec, flip=flip, batch_size=batch_size, progress="embedding"
    )
    report = evaluate_lfw(embedder, pairs, images, folds=fold_ids, groups_csv=groups_csv)

    data = report.to_dict()
    data["settings"] = {
        "model": model,
        "weights": weights,
        "pairs": pairs,
        "folds": list(fold_ids),
        "flip": flip,
        "groups_csv": groups_csv,
    }
    text = dumps_json(data)  # NaN/Infinity never reach a reader
    outputs: list[tuple[str, Any]] = []
    if roc_path is not None:
        png = roc_png(report, title=f"{loaded.spec.name} on LFW")
        outputs.append((roc_path, lambda tmp: Path(tmp).write_bytes(png)))
    if json_path not in (None, "-"):
        outputs.append((json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8")))
    atomic_write_all(outputs)  # the ROC image and the JSON report appear together or not at all
    if json_path == "-":
        emit(text)
        return
    header = f"LFW verification: {model}, folds {folds}{', flip' if flip else ''}"
    emit(format_report(report, header))
    for label, out in (("json", json_path), ("roc", roc_path)):
        if out is not None:
            emit(f"{label}: {printable(out)}")
