"""`edgeface export`: PyTorch model -> ONNX / TFLite artifacts (fp32, int8, w6a6) with spec and parity."""

from __future__ import annotations

from typing import Any

import click

from edgeface.cli.options import COSINE_FLOOR, PROBABILITY_OPEN, Count, model_options
from edgeface.cli.pack_cmd import pack_options
from edgeface.io import dumps_json


@click.command("export")
@model_options
@click.option("--int8", "precisions", flag_value="int8", help="int8 weights (per channel) and activations.")
@click.option(
    "--w6a6", "precisions", flag_value="w6a6", help="6-bit grid for weights and activations, int8 storage."
)
@click.option("--fp32", "precisions", flag_value="fp32", help="float32 (the reference artifact).")
@click.option(
    "--precision",
    "precision_list",
    default=None,
    help="Several precisions at once, comma-separated: fp32,int8,w6a6.",
)
@click.option(
    "--format",
    "formats",
    default="onnx,tflite",
    show_default=True,
    help="Comma-separated artifact formats: onnx, tflite.",
)
@click.option(
    "--calib",
    "calib",
    required=True,
    type=click.Path(),
    help="Calibration images: an LFW root (its compression split is used) or any image folder.",
)
@click.option(
    "--output",
    "-o",
    "outdir",
    required=True,
    type=click.Path(file_okay=True),
    help="Output folder; artifacts are named <model>_<precision>.<onnx|tflite> (+ .json spec).",
)
@click.option(
    "--min-cosine",
    default=0.99,
    show_default=True,
    type=COSINE_FLOOR,
    help="Fail (exit 3, nothing written) when mean parity cosine to PyTorch is below this.",
)
@click.option(
    "--calib-images",
    default=256,
    show_default=True,
    type=Count(1),
    help="Images for activation ranges and the verification threshold.",
)
@click.option(
    "--parity-images",
    default=128,
    show_default=True,
    type=Count(1),
    help="Held-out images for the parity check.",
)
@click.option(
    "--far",
    default=1e-3,
    show_default=True,
    type=PROBABILITY_OPEN,
    help="FAR the embedded threshold is set at, in (0, 1).",
)
@click.option(
    "--keep-float",
    "keep_float",
    multiple=True,
    metavar="LAYER",
    help="Leave this layer (ONNX node or module path, e.g. model.stages.2) float in integer ONNX artifacts; "
    "repeatable. The failure messages and the report's float_ops name candidates.",
)
@pack_options
@click.option(
    "--no-pack", is_flag=True, help="Write the artifacts only: no detector, licences or pack manifest."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_cmd(
    model: str,
    weights: str | None,
    spec_file: str | None,
    precisions: str | None,
    precision_list: str | None,
    formats: str,
    calib: str,
    outdir: str,
    min_cosine: float,
    calib_images: int,
    parity_images: int,
    far: float,
    keep_float: tuple[str, ...],
    detector: str | None,
    licenses: tuple[str, ...],
    detector_license: str | None,
    archive: str | None,
    no_pack: bool,
    as_json: bool,
) -> None:
    """Export MODEL to device artifacts, check them against PyTorch, and embed their spec. The output
    folder becomes a pack (see `edgeface pack`): with the face detector, the licences and a manifest, it
    is all a device needs (`--model OUTDIR`)."""
    from edgeface.converters.export import export
    from edgeface.errors import EdgefaceError

    chosen = precision_list or precisions
    if not chosen:
        raise EdgefaceError("choose a precision: --int8, --w6a6, --fp32 or --precision fp32,int8,w6a6")
    if no_pack and (archive or detector or licenses or detector_license):
        raise EdgefaceError("--no-pack writes no pack: --archive, --detector and --license do not apply")
    det_path, det_license, model_licenses = None, None, []
    if not no_pack:  # before the slow part: the pack's detector and licences exist
        from edgeface.cli.pack_cmd import check_archive
        from edgeface.runtime.pack_write import check_detector, model_license

        check_archive(archive)
        det_path, det_license = check_detector(detector, detector_license)
        model_licenses = model_license(licenses, weights)

    def finish(reports: list) -> None:
        pack_lines = []
        if not no_pack and reports:
            pack_lines = _write_pack(reports, outdir, det_path, det_license, model_licenses, archive)
        _print(reports, far, as_json, pack_lines)

    try:
        reports = export(
            model,
            weights,
            spec_file,
            chosen,
            formats,
            calib,
            outdir,
            min_cosine=min_cosine,
            calib_images=calib_images,
            parity_images=parity_images,
            far=far,
            progress=not as_json,
            keep_float=keep_float,
        )
    except EdgefaceError as e:  # some artifacts failed: pack and print the ones written, then the error
        finish(getattr(e, "reports", []))
        raise
    finish(reports)


def _print(reports: list, far: float, as_json: bool, pack_lines: list[str]) -> None:
    for r in reports:
        for w in r.extra.get("warnings", []):
            click.echo(f"warning: {w}", err=True)
    unset = [r for r in reports if r.threshold is None]
    if unset:
        click.echo(
            f"warning: no verification threshold set ({unset[0].extra['threshold_unset']}); `verify` will "
            f"need --threshold until you calibrate one on labelled faces: edgeface threshold {unset[0].path} "
            f"--data DIR/<identity>/<image> --fmr {far:g}",
            err=True,
        )
    if as_json:
        click.echo(dumps_json([r.to_dict() for r in reports]))
        return
    for r in reports:
        size = f"{r.size_bytes / 1e6:.2f} MB"
        if r.packed_size_bytes is not None:
            size += f" (6-bit packed {r.packed_size_bytes / 1e6:.2f} MB)"
        drift = f", most drift at {r.parity.drift_layer}" if r.parity.drift_layer else ""
        speed = f"  {r.extra['speedup_vs_fp32']:.2f}x fp32" if "speedup_vs_fp32" in r.extra else ""
        thr = "unset" if r.threshold is None else f"{r.threshold:.4f} @FAR {far:g}"
        click.echo(
            f"{r.path}  {size}  parity cosine mean {r.parity.mean_cosine:.4f} min {r.parity.min_cosine:.4f}"
            f"{drift}  threshold {thr}  per-channel layers {r.per_channel_layers}"
            f"{speed}"
        )
        floats = r.extra.get("float_ops")
        if floats:
            click.echo(
                "  float ops: " + "; ".join(f"{op} x{v['count']} ({v['why']})" for op, v in floats.items())
            )
        kept = r.extra.get("checkpoint_float_layers")
        if kept:  # the quantized checkpoint's own decisions, grouped by why (every name is in --json)
            by_why: dict[str, list[str]] = {}
            for name, why in kept.items():
                by_why.setdefault(why, []).append(name)
            groups = "; ".join(
                f"{', '.join(names[:3])}{f', ... ({len(names)} in all)' if len(names) > 3 else ''} ({why})"
                for why, names in by_why.items()
            )
            click.echo(f"  layers the checkpoint keeps float: {groups}")
    for line in pack_lines:
        click.echo(line)


def _write_pack(
    reports: Any, outdir: str, detector: Any, detector_license: Any, licenses: Any, archive: str | None
) -> list[str]:
    """The export's output folder becomes a pack holding what this export wrote (and what an earlier
    export into the same folder packed, when unchanged)."""
    from edgeface.cli.pack_cmd import describe
    from edgeface.io import printable
    from edgeface.runtime.pack_write import write_pack

    pack = write_pack(
        outdir,
        [r.path for r in reports],
        detector=detector,
        licenses=licenses,
        detector_license=detector_license,
        merge=True,
        warn=lambda m: click.echo(f"warning: {printable(m)}", err=True),
    )
    path = None
    if archive:
        from edgeface.runtime.pack_archive import write_archive

        path = write_archive(pack, archive)
    return describe(pack, path)
