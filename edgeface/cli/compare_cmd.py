"""`edgeface compare`: artifacts (or PyTorch models) side by side on the same data, as one self-contained
HTML page plus JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeface.cli.options import BATCH, SEED, THREADS, Count, face_source_options, refine_setting
from edgeface.io import emit, printable

MAX_PROFILE_RUNS = 10_000


@click.command("compare")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="Identity-folder dataset DIR/<identity>/<image> (or --pairs/--images for LFW).",
)
@click.option("--pairs", type=click.Path(dir_okay=False), default=None, help="LFW pairs.txt.")
@click.option("--images", type=click.Path(file_okay=False), default=None, help="Aligned LFW folder.")
@click.option("--folds", default="6-10", show_default=True, help="LFW folds.")
@face_source_options
@click.option(
    "--impostors",
    type=Count(1, 50_000_000),
    default=200_000,
    show_default=True,
    help="--data: impostor pairs; all when there are fewer, else sampled (seeded).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of sampling and bootstrap.")
@click.option(
    "--bootstrap",
    type=Count(0, 100_000),
    default=1000,
    show_default=True,
    help="Subject-bootstrap replicates for the FNMR@FMR intervals (0: none).",
)
@click.option("--flip", is_flag=True, help="Embed each image plus its mirror.")
@click.option(
    "--groups", "groups_csv", type=click.Path(dir_okay=False), default=None, help="identity,group CSV."
)
@click.option(
    "--profile-runs",
    type=Count(0, MAX_PROFILE_RUNS),
    default=20,
    show_default=True,
    help="Timed `edgeface profile` runs per artifact (0: no latency).",
)
@click.option("--threads", type=THREADS, default=None, help="Inference threads; at most the machine's cores.")
@click.option("--batch-size", default=64, show_default=True, type=BATCH)
@click.option(
    "--output",
    "-o",
    "html_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="HTML report (self-contained: plots inlined, no network).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON report [default: next to the HTML as <name>.json].",
)
def compare_cmd(
    models: tuple[str, ...],
    data: str | None,
    pairs: str | None,
    images: str | None,
    folds: str,
    aligned: bool,
    face_policy: str,
    detector: str | None,
    no_refine: bool,
    impostors: int,
    seed: int,
    bootstrap: int,
    flip: bool,
    groups_csv: str | None,
    profile_runs: int,
    threads: int | None,
    batch_size: int,
    html_path: str,
    json_path: str | None,
) -> None:
    """Compare MODELS (artifacts .onnx/.tflite, or PyTorch models as NAME or NAME@WEIGHTS) on the same
    data; the first is the reference. Writes one HTML page and its JSON together."""
    from edgeface.errors import EdgefaceError
    from edgeface.eval.groups import read_groups
    from edgeface.eval.load import open_model, parse_compare_ref
    from edgeface.io import check_output_file

    if data is not None and (pairs is not None or images is not None):
        raise EdgefaceError("give either --data DIR or --pairs FILE --images DIR, not both")
    if data is None and (pairs is None or images is None):
        raise EdgefaceError("give --data DIR (identity folders), or --pairs FILE and --images DIR (LFW)")
    refs = [parse_compare_ref(m) for m in models]  # malformed references before anything loads
    if json_path is None:
        json_path = str(Path(html_path).with_suffix(".json"))
    if Path(json_path).resolve() == Path(html_path).resolve():
        raise EdgefaceError("--json and --output must be different files")
    for out in (html_path, json_path):
        check_output_file(out)
    groups = read_groups(groups_csv) if groups_csv is not None else None
    settings: dict[str, Any] = {
        "models": list(models),
        "flip": flip,
        "groups_csv": groups_csv,
        "bootstrap": bootstrap,
        "seed": seed,
        "profile_runs": profile_runs,
        "threads": threads,
    }
    if data is None:
        from edgeface.data.lfw import parse_folds, read_pairs, select_folds
        from edgeface.eval.lfw_eval import test_images

        assert pairs is not None and images is not None
        all_pairs = read_pairs(pairs)
        fold_ids = parse_folds(folds, available=max(p.fold for p in all_pairs))
        selected = select_folds(all_pairs, fold_ids)
        test_images(pairs, images, fold_ids)  # a missing image is named before any model loads
        settings.update(pairs=printable(pairs), images=printable(images), folds=list(fold_ids))
        description = f"LFW pairs {printable(pairs)}, folds {folds} ({len(selected):,} pairs)"
    else:
        from edgeface.eval.dataset import make_pairs, read_identity_folders

        dataset = read_identity_folders(data)
        pair_set = make_pairs(dataset.identity, impostors, seed)
        how = "aligned crops" if aligned else f"photos through detection (--face {face_policy})"
        refine = refine_setting(no_refine)
        settings.update(data=printable(data), aligned=aligned, face_policy=None if aligned else face_policy,
                        refine=None if aligned else refine, impostors=impostors)  # fmt: skip
        description = (
            f"identity folders {printable(data)}: {len(dataset.names):,} identities, {len(dataset.images):,} "
            f"images, {how}; {len(pair_set.genuine):,} genuine and {len(pair_set.impostor):,} impostor pairs"
        )

    from edgeface.eval.compare import assemble, latency, measure_folders, measure_lfw

    opened, measured, latencies = [], [], []
    for n, (ref, weights) in enumerate(refs):
        m = open_model(ref, weights, None, threads, label=_unique_label(ref, weights, n, refs))
        if data is None:
            assert pairs is not None and images is not None
            meas = measure_lfw(m, pairs, images, fold_ids, groups, flip, batch_size, bootstrap, seed)
        else:
            meas = measure_folders(m, dataset, pair_set, groups, aligned, flip, face_policy, detector,
                                   refine, bootstrap, seed)  # fmt: skip
        opened.append(m)
        measured.append(meas)
        latencies.append(latency(m, profile_runs, threads, detector))
    report = {"data": {"description": description}, "settings": settings}
    report["models"] = assemble(opened, measured, latencies)
    _write(report, [m.curve for m in measured], html_path, json_path)
    emit(_summary(report))
    emit(f"html: {printable(html_path)}")
    emit(f"json: {printable(json_path)}")


def _unique_label(ref: str, weights: str | None, n: int, refs: list[tuple[str, str | None]]) -> str:
    """Artifacts by file name; two with the same name get their folder too."""
    base = Path(ref).name if weights is None else f"{ref}@{Path(weights).name}"
    same = [r for r, w in refs if (Path(r).name if w is None else f"{r}@{Path(w).name}") == base]
    return f"{Path(ref).parent.name}/{base}" if len(same) > 1 else base


def _write(report: dict[str, Any], curves: list[Any], html_path: str, json_path: str) -> None:
    from edgeface.eval.html_report import render
    from edgeface.eval.plots import det_png, roc_overlay_png
    from edgeface.io import atomic_write_all, dumps_json

    text = dumps_json(report)  # NaN/Infinity never reach a reader
    page = render(report, det_png(curves, "DET"), roc_overlay_png(curves, "ROC"))
    atomic_write_all(
        [
            (html_path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8")),
            (json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8")),
        ]
    )  # the page and its JSON appear together or not at all


def _summary(report: dict[str, Any]) -> str:
    lines = [report["data"]["description"]]
    for m in report["models"]:
        f3 = m["fnmr_at_fmr"].get("1e-03")
        fnmr = (
            "n/a" if f3 is None else f"{f3['fnmr'] * 100:.2f} %" + ("" if f3["resolved"] else " (unresolved)")
        )
        agree = m.get("agreement_with_reference")
        same = "" if not agree or agree["decision_agreement"] is None else (
            f", same decision as reference {agree['decision_agreement'] * 100:.2f} %"
        )  # fmt: skip
        acc = m["accuracy"]["value"] * 100
        lines.append(f"  {printable(m['label'])}: accuracy {acc:.2f} %, FNMR@FMR=1e-03 {fnmr}{same}")
    return "\n".join(lines)
