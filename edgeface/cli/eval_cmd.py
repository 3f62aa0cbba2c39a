"""`edgeface eval`: verification accuracy of a PyTorch model or of an exported artifact (run through
edgeface.runtime, no torch), on LFW pairs or on the user's own identity-folder dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeface.cli.options import BATCH, SEED, THREADS, THRESHOLD, Count, face_source_options, refine_setting
from edgeface.io import emit, printable

MAX_BOOTSTRAP = 100_000


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f} %"


def _rate_cell(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['rate'] * 100:5.2f} % [{lo * 100:.2f}, {hi * 100:.2f}]"


def format_groups(g: dict[str, Any] | None) -> list[str]:
    if not g:
        return []
    source = f" ({g['threshold_source']})" if g.get("threshold_source") else ""
    lines = [
        "",
        f"per group at threshold {g['threshold']:.4f}{source} (rate [95 % Wilson CI], in %)",
        f"  {'group':<8}{'genuine':>8}  {'FNMR':<26}{'impostor':>8}  {'FMR':<26}",
    ]
    for name, r in g["groups"].items():
        fnmr, fmr = r["fnmr"], r["fmr"]
        fn_cell, fm_cell = _rate_cell(fnmr), _rate_cell(fmr)
        lines.append(f"  {printable(name):<8}{fnmr['n']:>8}  {fn_cell:<26}{fmr['n']:>8}  {fm_cell:<26}")
    gap = g["gap"]
    fn = "n/a" if gap["fnmr"] is None else f"{gap['fnmr'] * 100:.2f} pp"
    fm = "n/a" if gap["fmr"] is None else f"{gap['fmr'] * 100:.2f} pp"
    lines.append(f"  {'gap':<8}{'':>8}  {fn:<26}{'':>8}  {fm:<26}")
    u = g["unlabelled"]
    lines.append(
        f"  excluded: {u['genuine']} genuine + {u['impostor']} impostor pairs with an unlabelled identity, "
        f"{g['cross_group_impostor']} cross-group impostor pairs"
    )
    return lines


def format_report(report: Any, header: str) -> str:
    """The LFW table: percent here, fractions in the JSON."""
    lines = [
        header,
        f"  accuracy        {report.acc * 100:.2f} % ± {report.acc_std * 100:.2f}"
        f"  (k-fold, {report.n_pairs} pairs)",
    ]
    for key, tar in report.tar_at_far.items():
        lines.append(f"  TAR@FAR={key}   {_pct(tar)}")
    lines.append(f"  threshold       {report.threshold:.4f}  (cosine, best on all pairs)")
    return "\n".join(lines + format_groups(report.groups))


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]"


def format_folder_report(d: dict[str, Any], header: str) -> str:
    """The identity-folder table."""
    p, f = d["pairs"], d["failed_images"]
    impostors = (
        "all" if not p["impostor_sampled"] else f"sampled of {p['impostor_possible']:,}, seed {p['seed']}"
    )
    lines = [
        header,
        f"  data            {d['data']['identities']} identities, {d['data']['images']} images; "
        f"{f['count']} without a usable face ({f['rate'] * 100:.1f} %)",
        f"  pairs           {p['genuine']:,} genuine, {p['impostor']:,} impostor ({impostors}); "
        f"lost to failed images: {p['genuine_lost']:,} genuine, {p['impostor_lost']:,} impostor",
        "  FNMR@FMR        (95 % CI: subject bootstrap; threshold; impostors passing)",
    ]
    for key, r in d["fnmr_at_fmr"].items():
        cell = f"{r['fnmr'] * 100:6.2f} %{_ci(r['ci95'])}"
        where = f"threshold {r['threshold']:.4f}, {r['false_matches']}/{r['impostor']:,}"
        if not r["resolved"]:
            where += f"; NOT RESOLVED: FMR {key} needs >= {r['impostors_needed']:,} impostor pairs"
        lines.append(f"  FMR={key}       {cell:<28} {where}")
    lines.append(f"  EER             {d['eer']['eer'] * 100:.2f} % (threshold {d['eer']['threshold']:.4f})")
    at = d["at_threshold"]
    if at is not None:
        fm, fn = at["fmr"], at["fnmr"]
        lines += [
            f"  at threshold {at['threshold']:.4f} ({at['source']}), rate [95 % Wilson CI]:",
            f"    FMR          {_rate_cell(fm)}  ({fm['errors']}/{fm['n']:,})",
            f"    FNMR         {_rate_cell(fn)}  ({fn['errors']}/{fn['n']:,})",
            f"    FNMR counting pairs lost to failed images as non-matches: "
            f"{_rate_cell(at['fnmr_counting_failures'])}",
        ]
    else:
        lines.append("  no shipped threshold (pass --threshold to get FMR/FNMR at one)")
    if f["count"]:
        lines += ["", f"images without a usable face ({f['count']}):"]
        lines += [f"  {x['image']}: {x['reason']}" for x in f["images"]]
    return "\n".join(lines + format_groups(d["groups"]))


@click.command("eval")
@click.option(
    "--model",
    "-m",
    required=True,
    help="Artifact (.onnx/.tflite, run through edgeface.runtime) or PyTorch model: a built-in name "
    "(see `edgeface models`) or package.module:factory.",
)
@click.option("--weights", "-w", type=click.Path(dir_okay=False), default=None, help="PyTorch checkpoint.")
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="PyTorch model: spec JSON overriding the model's own.",
)
@click.option("--pairs", type=click.Path(dir_okay=False), default=None, help="LFW pairs.txt (View 2 format).")
@click.option(
    "--images", type=click.Path(file_okay=False), default=None, help="Aligned LFW folder (aligned112/)."
)
@click.option("--folds", default="6-10", show_default=True, help="LFW folds, e.g. 6-10 or 1,3,5.")
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="Identity-folder dataset DIR/<identity>/<image> (instead of --pairs/--images).",
)
@face_source_options
@click.option(
    "--impostors",
    type=Count(1, 50_000_000),
    default=200_000,
    show_default=True,
    help="--data: impostor pairs; all of them when there are fewer, else sampled (seeded).",
)
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="Seed of impostor sampling and bootstrap."
)
@click.option(
    "--bootstrap",
    type=Count(0, MAX_BOOTSTRAP),
    default=1000,
    show_default=True,
    help="--data: subject-bootstrap replicates for the FNMR@FMR intervals (0: none).",
)
@click.option(
    "--threshold",
    type=THRESHOLD,
    default=None,
    help="--data: report FMR/FNMR at this threshold instead of the model's shipped one.",
)
@click.option("--flip", is_flag=True, help="Embed each image plus its mirror (test-time flip).")
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
    help="LFW: ROC curve PNG [default: next to --json as <name>.roc.png].",
)
@click.option(
    "--det",
    "det_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="--data: DET curve PNG [default: next to --json as <name>.det.png].",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write the report as JSON to this file ('-' = stdout, then no table is printed).",
)
@click.option("--batch-size", default=64, show_default=True, type=BATCH)
@click.option("--threads", type=THREADS, default=None, help="Inference threads; at most the machine's cores.")
def eval_cmd(
    model: str,
    weights: str | None,
    spec_file: str | None,
    pairs: str | None,
    images: str | None,
    folds: str,
    data: str | None,
    aligned: bool,
    face_policy: str,
    detector: str | None,
    no_refine: bool,
    impostors: int,
    seed: int,
    bootstrap: int,
    threshold: float | None,
    flip: bool,
    groups_csv: str | None,
    roc_path: str | None,
    det_path: str | None,
    json_path: str | None,
    batch_size: int,
    threads: int | None,
) -> None:
    """Verify a model or an artifact: on LFW pairs (--pairs/--images: k-fold accuracy, TAR@FAR, ROC) or
    on an identity-folder dataset (--data: FNMR@FMR with intervals, rates at the shipped threshold, DET).

    Fractions in the JSON, percent in the table. An artifact runs through edgeface.runtime exactly as on
    the device; torch is not imported for it.
    """
    from edgeface.errors import EdgefaceError
    from edgeface.eval.groups import read_groups
    from edgeface.io import check_output_file

    if data is not None and (pairs is not None or images is not None):
        raise EdgefaceError("give either --data DIR or --pairs FILE --images DIR, not both")
    if data is None and (pairs is None or images is None):
        raise EdgefaceError(
            "give --pairs FILE and --images DIR (LFW protocol), or --data DIR (identity folders)"
        )
    # Cheap checks first: a typo must not cost a model load and an embedding pass.
    if data is None:
        from edgeface.data.lfw import parse_folds, read_pairs, select_folds

        assert pairs is not None
        all_pairs = read_pairs(pairs)
        fold_ids = parse_folds(folds, available=max(p.fold for p in all_pairs))  # bounded before expanding
        select_folds(all_pairs, fold_ids)
    else:
        from edgeface.eval.dataset import make_pairs, read_identity_folders

        dataset = read_identity_folders(data)
        pair_set = make_pairs(dataset.identity, impostors, seed)
    groups = read_groups(groups_csv) if groups_csv is not None else None
    plot_path = roc_path if data is None else det_path
    if data is not None and roc_path is not None:
        raise EdgefaceError("--roc is for the LFW protocol; with --data the curve is a DET plot (--det)")
    if data is None and det_path is not None:
        raise EdgefaceError("--det is for --data; the LFW protocol draws a ROC curve (--roc)")
    if plot_path is None and json_path not in (None, "-"):
        plot_path = str(Path(json_path).with_suffix("")) + (".roc.png" if data is None else ".det.png")
    for out in (json_path, plot_path):
        if out not in (None, "-"):
            check_output_file(out)  # a missing, read-only or file-blocked folder fails before the model loads

    from edgeface.eval.load import is_artifact, open_model
    from edgeface.runtime.pipeline import batch_threads

    # An artifact over raw photos: the network on one thread beside the detection workers, as the batch
    # verbs do (a torch model keeps its threads; only artifacts were measured this way).
    net_threads, workers = batch_threads(threads, data is not None and not aligned and is_artifact(model))
    subject = open_model(model, weights, spec_file, net_threads)
    settings: dict[str, Any] = {
        "model": model,
        "model_kind": subject.kind,
        "weights": weights,
        "flip": flip,
        "groups_csv": groups_csv,
    }
    if data is None:
        from edgeface.eval.lfw_eval import evaluate_lfw
        from edgeface.eval.plots import roc_png

        embedder = subject.embedder(flip=flip, batch_size=batch_size, progress="embedding")
        assert pairs is not None and images is not None
        report = evaluate_lfw(embedder, pairs, images, folds=fold_ids, groups_csv=groups_csv)
        result = report.to_dict()
        settings.update(pairs=pairs, folds=list(fold_ids))
        png = roc_png(report, title=f"{subject.spec.name} on LFW") if plot_path is not None else None
        header = f"LFW verification: {printable(model)}, folds {folds}{', flip' if flip else ''}"
        text_report = format_report(report, header)
    else:
        from edgeface.eval.acquire import acquire
        from edgeface.eval.folder_eval import evaluate_folders
        from edgeface.eval.plots import det_png

        got = acquire(
            subject.net,
            dataset.images,
            aligned,
            flip,
            face_policy,
            detector,
            refine=refine_setting(no_refine),
            progress="embedding",
            workers=workers,
        )
        thr, source = (
            (threshold, "--threshold") if threshold is not None else (subject.spec.threshold, "shipped")
        )
        folder = evaluate_folders(dataset, pair_set, got, thr, source, groups, bootstrap=bootstrap, seed=seed)
        result = folder.to_dict()
        settings.update(
            data=printable(data),
            aligned=aligned,
            face_policy=None if aligned else face_policy,
            refine=None if aligned else refine_setting(no_refine),
            impostors=impostors,
            seed=seed,
            bootstrap=bootstrap,
        )
        png = None
        if plot_path is not None:
            png = det_png([det_curve(subject.label, folder)], f"{subject.label} on {Path(data).name}")
        how = "aligned crops" if aligned else f"photos through detection, --face {face_policy}"
        header = f"identity-folder verification: {printable(model)} on {printable(data)} ({how})"
        text_report = format_folder_report(result, header)
    result["settings"] = settings
    _write_outputs(result, json_path, plot_path, png)
    if json_path == "-":
        return
    emit(text_report)
    for label, out in (("json", json_path), ("roc" if data is None else "det", plot_path)):
        if out is not None:
            emit(f"{label}: {printable(out)}")


def det_curve(label: str, folder: Any) -> Any:
    """The DET curve of one folder report, with its FNMR@FMR points and the shipped threshold's point."""
    from edgeface.eval.plots import Curve

    fmr, fnmr = folder.det
    d = folder.to_dict()
    points = [
        (f"FMR {k}", r["fmr"], r["fnmr"], tuple(r["ci95"]) if r["ci95"] else None)
        for k, r in d["fnmr_at_fmr"].items()
        if r["resolved"]
    ]
    at = d["at_threshold"]
    if at is not None and at["fmr"]["rate"] is not None:
        points.append((f"threshold {at['threshold']:.3f}", at["fmr"]["rate"], at["fnmr"]["rate"], None))
    return Curve(label, fmr, fnmr, len(folder.scores.genuine), len(folder.scores.impostor), points)


def _write_outputs(
    result: dict[str, Any], json_path: str | None, plot_path: str | None, png: bytes | None
) -> None:
    from edgeface.io import atomic_write_all, dumps_json

    text = dumps_json(result)  # NaN/Infinity never reach a reader
    outputs: list[tuple[str, Any]] = []
    if plot_path is not None and png is not None:
        outputs.append((plot_path, lambda tmp: Path(tmp).write_bytes(png)))
    if json_path not in (None, "-"):
        outputs.append((json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8")))
    atomic_write_all(outputs)  # the plot and the JSON report appear together or not at all
    if json_path == "-":
        emit(text)
