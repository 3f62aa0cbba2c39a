"""`edgeface export`: PyTorch model -> ONNX / TFLite artifacts (fp32, int8, w6a6) with spec and parity."""

from __future__ import annotations

import click

from edgeface.cli.options import COSINE_FLOOR, PROBABILITY_OPEN, Count, model_options
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
    as_json: bool,
) -> None:
    """Export MODEL to device artifacts, check them against PyTorch, and embed their spec."""
    from edgeface.converters.export import export
    from edgeface.errors import EdgefaceError

    chosen = precision_list or precisions
    if not chosen:
        raise EdgefaceError("choose a precision: --int8, --w6a6, --fp32 or --precision fp32,int8,w6a6")
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
    )
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
        thr = "unset" if r.threshold is None else f"{r.threshold:.4f} @FAR {far:g}"
        click.echo(
            f"{r.path}  {size}  parity cosine mean {r.parity.mean_cosine:.4f} min {r.parity.min_cosine:.4f}"
            f"{drift}  threshold {thr}  per-channel layers {r.per_channel_layers}"
        )
