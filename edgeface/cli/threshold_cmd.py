"""`edgeface threshold`: set an artifact's verification threshold at a target FMR on the user's own data."""

from __future__ import annotations

import click

from edgeface.cli.options import (
    PROBABILITY_OPEN,
    SEED,
    THREADS,
    Count,
    FiniteFloat,
    face_source_options,
    refine_setting,
)
from edgeface.io import dumps_json, emit, printable


@click.command("threshold")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False),
    help="Identity-folder dataset DIR/<identity>/<image> (an LFW root gives its compression split).",
)
@click.option(
    "--fmr",
    type=PROBABILITY_OPEN,
    default=1e-3,
    show_default=True,
    help="Target false match rate in (0, 1); FMR f needs at least 1/f impostor pairs.",
)
@click.option(
    "--confidence",
    type=FiniteFloat(0.0, 1.0, max_open=True),
    default=0.95,
    show_default=True,
    help="Confidence, over people, that the FMR on other people like those of --data stays at or below "
    "--fmr: the threshold is this quantile of thresholds calibrated on people resampled with replacement "
    "(pairs share people, so their count overstates the certainty). 0: the point estimate.",
)
@click.option(
    "--replicates",
    type=Count(20, 100_000),
    default=200,
    show_default=True,
    help="People-resampling replicates behind --confidence.",
)
@face_source_options
@click.option("--flip", is_flag=True, help="Calibrate for `verify --flip` (face plus its mirror).")
@click.option(
    "--impostors",
    type=Count(1, 50_000_000),
    default=1_000_000,
    show_default=True,
    help="Impostor pairs; all of them when there are fewer, else sampled (seeded).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the impostor sampling.")
@click.option("--threads", type=THREADS, default=None, help="Inference threads; at most the machine's cores.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration record as JSON.")
def threshold_cmd(
    artifact: str,
    data: str,
    fmr: float,
    confidence: float,
    replicates: int,
    aligned: bool,
    face_policy: str,
    detector: str | None,
    no_refine: bool,
    flip: bool,
    impostors: int,
    seed: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Calibrate ARTIFACT's threshold at --fmr on the impostor pairs of --data, and write it into the
    artifact's embedded spec and its sidecar JSON together (a failure changes neither).

    The data's size and the FMR it can resolve are recorded in the spec's provenance
    (threshold_calibration). Note: a gallery records the artifact's SHA-256, which a new threshold changes:
    calibrate before enrolling.
    """
    from edgeface.converters.threshold import calibrate_artifact
    from edgeface.io import check_output_file
    from edgeface.spec import spec_path_for

    for out in (artifact, spec_path_for(artifact)):
        check_output_file(out)  # a read-only folder fails before any embedding
    r = calibrate_artifact(
        artifact,
        data,
        fmr,
        aligned=aligned,
        face_policy=face_policy,
        detector=detector,
        refine=refine_setting(no_refine),
        flip=flip,
        max_impostors=impostors,
        seed=seed,
        threads=threads,
        progress=not as_json,
        confidence=confidence,
        replicates=replicates,
    )
    if not r["resolved"]:
        click.echo(
            f"warning: FMR {fmr:g} needs at least {int(round(1 / fmr)):,} impostor pairs; "
            f"{printable(data)} gives {r['impostor_pairs']:,}, so the threshold sits above every impostor "
            f"and the smallest FMR these data can show is {r['fmr_reachable']:.1e}: add images of more "
            "identities",
            err=True,
        )
    if as_json:
        emit(dumps_json(r))
        return
    sampled = f"sampled of {r['impostor_possible']:,}, seed {seed}" if r["impostor_sampled"] else "all"
    fn = r["fnmr"]
    fnmr = (
        "n/a (no genuine pairs)"
        if fn["rate"] is None
        else f"{fn['rate'] * 100:.2f} % [{fn['ci95'][0] * 100:.2f}, {fn['ci95'][1] * 100:.2f}] "
        f"({fn['errors']}/{fn['n']:,})"
    )
    previous = (
        "none"
        if r["previous_threshold"] is None
        else f"{r['previous_threshold']:.4f}"
        + (f" at FMR {r['previous_threshold_far']:g}" if r["previous_threshold_far"] else "")
    )
    how = (
        f"{confidence * 100:g} % people-level bound; point estimate {r['threshold_point']:.4f}"
        if confidence > 0
        else "point estimate"
    )
    emit(f"threshold {r['threshold']:.4f} at FMR {fmr:g} ({how}) written to {', '.join(r['written'])}")
    emit(
        f"  data            {r['identities']:,} identities, {r['images']:,} images "
        f"({r['images_without_face']} without a usable face)"
    )
    emit(
        f"  impostor pairs  {r['impostor_pairs']:,} ({sampled}); {r['false_matches']} pass: FMR "
        f"{r['fmr_achieved']:.2e} (smallest resolvable {r['fmr_reachable']:.1e})"
    )
    emit(f"  genuine pairs   {r['genuine_pairs']:,}; FNMR at this threshold {fnmr}")
    emit(f"  previous        {previous}")
    for f in r["failed_images"]:
        emit(f"  no usable face: {f['image']}: {f['reason']}")
