"""On-device verbs: `edgeface verify | enroll | identify | gallery | profile`.

Runtime-only: these import edgeface.runtime (numpy, OpenCV, onnxruntime/LiteRT), never torch, so they work
on a Pi with the base install. Errors are EdgefaceError (one line, exit 2); warnings go to stderr so
`--json` output on stdout stays parseable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeface import quiet
from edgeface.cli.options import (
    FACE_POLICIES,
    SECONDS,
    Count,
    detector_option,
    no_refine_option,
    refine_setting,
    threads_option,
    threshold_option,
)
from edgeface.cli.quality_options import check_faces, enroll_gate, verify_gate
from edgeface.io import dumps_json, emit, printable

MODEL_ENV = "EDGEFACE_MODEL"
ARTIFACT_ENV = "EDGEFACE_ARTIFACT"
ARTIFACT_META = "edgeface.artifact"  # ctx.meta key: --artifact, for the --model callback
MAX_RUNS = 1_000_000  # profile: with --max-seconds, the bound on how long a profile can take
DEFAULT_MAX_SECONDS = 600.0


def _echo_json(data: Any) -> None:
    emit(dumps_json(data))  # NaN/Infinity never reach a reader; a full stdout is one error line


def _remember_artifact(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta[ARTIFACT_META] = value  # eager: read by the --model callback, whatever the order typed


def resolve_model(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--model PACK (a pack folder or archive) -> the artifact file it runs, checked against the pack's
    manifest; an artifact path stays as it is. Which artifact of several was taken is said on stderr."""
    if value is None:
        return None
    from edgeface.runtime.pack import resolve

    resolved = resolve(value, ctx.meta.get(ARTIFACT_META))  # hashes checked before the note is printed
    if resolved.note:
        quiet.note(printable(resolved.note))
    return str(resolved.path)


def artifact_name_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--artifact",
        "artifact_choice",  # not "artifact": profile's ARTIFACT argument has that name
        envvar=ARTIFACT_ENV,
        expose_value=False,
        is_eager=True,
        callback=_remember_artifact,
        help=f"With a pack: which of its artifacts (file name; default: the pack's) [env {ARTIFACT_ENV}].",
    )(f)


def artifact_option(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--model",
        "model",
        required=True,
        envvar=MODEL_ENV,
        type=click.Path(),
        callback=resolve_model,
        help=f"Exported artifact (.onnx or .tflite, with its spec), or a pack folder or archive (its "
        f"detector comes with it) [env {MODEL_ENV}].",
    )(f)
    return artifact_name_option(f)


def pipeline_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            artifact_option,
            detector_option,
            click.option(
                "--face",
                "face_policy",
                type=click.Choice(FACE_POLICIES),
                default="auto",
                show_default=True,
                help="Which face of a photo: auto (size, centrality, detector score, not cut by the border), "
                "largest, center, highest-score, or all (verify/identify: one result per face).",
            ),
            click.option(
                "--strict-single-face",
                is_flag=True,
                help="Fail when a photo has several faces instead of choosing one (--face).",
            ),
            threads_option,
            click.option("--flip", is_flag=True, help="Add the mirrored face's embedding (2x embed time)."),
            no_refine_option,
            click.option(
                "--aligned",
                is_flag=True,
                help="Inputs are aligned face crops: no detection; resized keeping their aspect ratio "
                "(the spec's face crop).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ]
    ):
        f = opt(f)
    return f


def gallery_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--gallery",
        "gallery_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="SQLite gallery file (default: $EDGEFACE_GALLERY or ~/.local/share/edgeface/gallery.sqlite).",
    )(f)


def _pipeline(
    model: str,
    detector: str | None,
    strict: bool,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    face_policy: str = "auto",
    aligned: bool = False,
    batch: bool = False,
) -> Any:
    """`batch`: many photos (verify --pairs, enroll --from-dir): threads as pipeline.batch_threads."""
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.pipeline import Pipeline, batch_threads

    net_threads, workers = batch_threads(threads, batch and not aligned)
    return Pipeline(
        load_artifact(model, num_threads=net_threads),
        workers=workers,
        detector_path=detector,
        strict_single_face=strict,
        flip=flip,
        refine_landmarks=refine_setting(no_refine),
        face=face_policy,
        aligned=aligned,
    )


def _warn_above_bar(msg: str) -> None:
    """A pipeline warning while a progress bar runs: printed above the bar, never on its line."""
    import sys

    from tqdm.auto import tqdm

    tqdm.write(f"warning: {msg}", file=sys.stderr)


def _face_json(e: Any) -> dict[str, Any]:
    if e.aligned:  # the whole image was the face: nothing was detected
        return {
            "image": printable(e.path),
            "aligned": True,
            "faces_found": 1,
            "box": [round(v, 1) for v in e.face.box],
            "detector_score": None,
            "visible": 1.0,
        }
    return {
        "image": printable(e.path),
        "faces_found": e.faces_found,
        "box": [round(v, 1) for v in e.face.box],
        "detector_score": round(e.face.score, 4),
        "visible": round(e.visible, 2),  # < 1: cut by the border (part of the aligned crop is black)
    }


def _box(e: Any) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in e.face.box) + "]"


@click.command("verify")
@click.argument("image1", type=click.Path(), required=False)
@click.argument("image2", type=click.Path(), required=False)
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Verify every pair of this list (one 'IMAGE1<tab>IMAGE2' per line, paths relative to the list) "
    "in one process, each image embedded once; one JSON line per pair.",
)
@pipeline_options
@threshold_option
@verify_gate
def verify_cmd(
    image1: str | None,
    image2: str | None,
    pairs_file: str | None,
    model: str,
    detector: str | None,
    face_policy: str,
    strict_single_face: bool,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    aligned: bool,
    as_json: bool,
    threshold: float | None,
) -> None:
    """1:1 verification: are IMAGE1 and IMAGE2 the same person? (exit 0 either way; see `match`)

    With --face all, every face of IMAGE1 is compared with every face of IMAGE2: `results` has one entry
    per pair (one per face of IMAGE2 when IMAGE1 is a one-face reference photo), best score first, and the
    top-level `match`/`score`/`faces` are those of the best pair.

    With --pairs FILE, every listed pair is verified in this one process and printed as one JSON line
    (`match`, `score`, `threshold`, `faces`, or `error` when an image gives no usable face)."""
    from edgeface.errors import EdgefaceError
    from edgeface.runtime.pipeline import Timings, require_threshold

    if pairs_file is not None:
        if image1 is not None or image2 is not None:
            raise EdgefaceError("give either IMAGE1 IMAGE2 or --pairs FILE, not both")
        _verify_pairs(pairs_file, model, detector, face_policy, strict_single_face, threads, flip, no_refine,
                      aligned, threshold)  # fmt: skip
        return
    if image1 is None or image2 is None:
        raise EdgefaceError("give two images (IMAGE1 IMAGE2), or a list of pairs with --pairs FILE")
    pipe = _pipeline(model, detector, strict_single_face, threads, flip, no_refine, face_policy, aligned)
    require_threshold(pipe, threshold)  # before any image is embedded
    t = Timings()
    pairs = pipe.verify_faces(image1, image2, threshold, t)
    d, a, b = pairs[0]
    check_faces([a, b], "verify")  # the best pair's faces: under --face all, the ones that decided `match`
    if as_json:
        _echo_json(
            {
                "match": d.match,
                "score": d.score,
                "threshold": d.threshold,
                "model": model,
                "face_policy": face_policy,
                "faces": [_face_json(a), _face_json(b)],
                "results": [
                    {"match": r.match, "score": r.score, "faces": [_face_json(x), _face_json(y)]}
                    for r, x, y in pairs
                ],
                "timings_ms": t.ms,
            }
        )
        return
    verdict = "same person" if d.match else "different people"
    if face_policy != "all" or aligned:
        emit(f"{verdict}: score {d.score:.4f} (threshold {d.threshold:.4f})")
        return
    emit(f"{verdict} (best of {len(pairs)} face pair(s)): score {d.score:.4f} (threshold {d.threshold:.4f})")
    for r, x, y in pairs:
        emit(f"  {'match' if r.match else 'no match':<8} {r.score:.4f}  box {_box(x)} vs box {_box(y)}")


def _verify_pairs(
    pairs_file: str,
    model: str,
    detector: str | None,
    face_policy: str,
    strict_single_face: bool,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    aligned: bool,
    threshold: float | None,
) -> None:
    from tqdm.auto import tqdm

    from edgeface.runtime.batch import read_pair_list, verify_pair_list
    from edgeface.runtime.pipeline import require_threshold

    pairs = read_pair_list(pairs_file)  # every image checked before the artifact loads
    pipe = _pipeline(
        model, detector, strict_single_face, threads, flip, no_refine, face_policy, aligned, batch=True
    )
    pipe.warn = _warn_above_bar
    require_threshold(pipe, threshold)
    failed = 0
    results = verify_pair_list(pipe, pairs, threshold, lambda faces: check_faces(faces, "verify"), _face_json)
    for r in tqdm(results, total=len(pairs), desc="verify", unit="pair", disable=len(pairs) < 5):
        failed += "error" in r
        emit(dumps_json(r, lines=True))  # JSON lines: one compact object per pair
    if failed:
        click.echo(f"warning: {failed} of {len(pairs)} pair(s) have an image without a usable face", err=True)


@click.command("enroll")
@click.option("--name", default=None, help="Identity to add the templates to (created if new).")
@click.argument("images", nargs=-1, type=click.Path())
@click.option(
    "--from-dir",
    "from_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Enroll DIR/<identity>/<image>: identity = folder name, one transaction per identity; images "
    "without a usable face are skipped and listed.",
)
@pipeline_options
@gallery_option
@enroll_gate
def enroll_cmd(
    name: str | None,
    images: tuple[str, ...],
    from_dir: str | None,
    model: str,
    detector: str | None,
    face_policy: str,
    strict_single_face: bool,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    aligned: bool,
    as_json: bool,
    gallery_path: str | None,
) -> None:
    """Add one template per IMAGE to identity NAME. All images are checked first, then written in one
    transaction: a bad image or a crash leaves the gallery as it was.

    With --from-dir DIR, every folder of DIR is an identity: its images are embedded (those without a
    usable face, or refused by the quality gate, are skipped and listed) and written in one transaction
    per identity."""
    from tqdm.auto import tqdm

    from edgeface.errors import EdgefaceError
    from edgeface.runtime.gallery import Gallery, ModelTag, check_new_name

    if face_policy == "all":
        raise EdgefaceError(
            "enroll adds one template per photo: --face all is for verify and identify; choose auto, "
            "largest, center or highest-score"
        )
    if from_dir is not None:
        if name is not None or images:
            raise EdgefaceError("give either --from-dir DIR or --name NAME IMAGE..., not both")
        _enroll_from_dir(from_dir, model, detector, face_policy, strict_single_face, threads, flip, no_refine,
                         aligned, as_json, gallery_path)  # fmt: skip
        return
    if name is None or not images:
        raise EdgefaceError(
            "give --name NAME and at least one IMAGE, or a folder of identities with --from-dir"
        )
    name = check_new_name(name)  # before anything is loaded: the one normalisation of names
    pipe = _pipeline(model, detector, strict_single_face, threads, flip, no_refine, face_policy, aligned)
    pipe.warn = _warn_above_bar
    tag = ModelTag.of(pipe.spec, model)
    with Gallery(gallery_path) as g:
        g.check_model(tag)  # fail before the (slow) embedding of every image
        embedded = [
            pipe.embed_image(p) for p in tqdm(images, desc="enroll", unit="img", disable=len(images) < 5)
        ]
        check_faces(embedded, "enroll")
        added = g.enroll(name, [e.embedding for e in embedded], tag, sources=[str(e.path) for e in embedded])
        total = g.templates_of(name)
        path = g.path
    if as_json:
        _echo_json(
            {
                "name": name,
                "added": added,
                "face_policy": face_policy,
                "templates": total,
                "gallery": printable(path),
                "faces": [_face_json(e) for e in embedded],
            }
        )
        return
    emit(f"enrolled {added} template(s) for '{name}' ({total} in total) in {printable(path)}")


def _enroll_from_dir(
    root: str,
    model: str,
    detector: str | None,
    face_policy: str,
    strict_single_face: bool,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    aligned: bool,
    as_json: bool,
    gallery_path: str | None,
) -> None:
    from collections import Counter

    from tqdm.auto import tqdm

    from edgeface.errors import EdgefaceError
    from edgeface.runtime.batch import embed_identity, plan_enrollment
    from edgeface.runtime.gallery import Gallery, ModelTag, check_new_name

    plan = plan_enrollment(root)  # layout errors before the artifact loads
    pipe = _pipeline(
        model, detector, strict_single_face, threads, flip, no_refine, face_policy, aligned, batch=True
    )
    pipe.warn = _warn_above_bar
    tag = ModelTag.of(pipe.spec, model)
    done: list[dict[str, Any]] = []
    skipped = [{"image": printable(p), "reason": "not in an identity folder"} for p in plan.loose]
    skipped_identities: list[dict[str, str]] = []
    with Gallery(gallery_path) as g:
        g.check_model(tag)  # fail before the (slow) embedding of every image
        bar = tqdm(total=plan.images, desc="enroll", unit="img")
        try:
            for folder, paths in plan.identities:
                bar.set_postfix_str(printable(folder)[:30])
                try:
                    name = check_new_name(folder)
                except EdgefaceError as e:
                    skipped_identities.append({"identity": printable(folder), "reason": str(e)})
                    skipped += [{"image": printable(p), "reason": "identity name refused"} for p in paths]
                    bar.update(len(paths))
                    continue
                kept, lost = embed_identity(
                    pipe, paths, lambda faces: check_faces(faces, "enroll"), lambda: bar.update(1)
                )
                skipped += [{"image": printable(p), "reason": printable(why)} for p, why in lost]
                if not kept:
                    skipped_identities.append(
                        {
                            "identity": printable(name),
                            "reason": f"none of its {len(paths)} image(s) could be enrolled",
                        }
                    )
                    continue
                added = g.enroll(name, [e.embedding for e in kept], tag, sources=[str(e.path) for e in kept])
                done.append({"name": name, "added": added, "templates": g.templates_of(name)})
        finally:
            bar.close()
        path = g.path
    if as_json:
        _echo_json(
            {
                "gallery": printable(path),
                "face_policy": None if aligned else face_policy,
                "aligned": aligned,
                "identities": done,
                "templates_added": sum(d["added"] for d in done),
                "skipped": skipped,
                "skipped_identities": skipped_identities,
            }
        )
        return
    total = sum(d["added"] for d in done)
    emit(f"enrolled {total} template(s) for {len(done)} identities in {printable(path)}")
    if skipped:
        reasons = Counter(_reason_kind(s["reason"]) for s in skipped)
        emit(f"skipped {len(skipped)} image(s): " + ", ".join(f"{n} {k}" for k, n in reasons.most_common()))
        for s in skipped:
            emit(f"  {s['image']}: {s['reason']}")
    for s in skipped_identities:
        emit(f"  identity {printable(s['identity'])} not enrolled: {s['reason']}")


def _reason_kind(reason: str) -> str:
    """A short label for the skip summary ('3 no face, 1 poor quality')."""
    for key, label in (
        ("no face", "no face"),
        ("no usable face", "no usable face"),
        ("poor face quality", "poor quality"),
        ("faces found", "several faces"),
        ("cannot decode", "unreadable"),
        ("too large", "too large"),
        ("identity folder", "outside identity folders"),
        ("name refused", "bad identity name"),
    ):
        if key in reason:
            return label
    return "other"


@click.command("identify")
@click.argument("image", type=click.Path())
@pipeline_options
@gallery_option
@click.option("--top-k", type=Count(1), default=5, show_default=True, help="Candidates to list.")
@threshold_option
def identify_cmd(
    image: str,
    model: str,
    detector: str | None,
    face_policy: str,
    strict_single_face: bool,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    aligned: bool,
    as_json: bool,
    gallery_path: str | None,
    top_k: int,
    threshold: float | None,
) -> None:
    """1:N identification of IMAGE against the gallery; the best candidate is accepted at the threshold.

    With --face all, every face of IMAGE is identified: `results` has one entry per face (best-placed face
    first, as --face auto ranks them), and the top-level fields are those of the first."""
    from edgeface.runtime.gallery import Gallery, ModelTag
    from edgeface.runtime.pipeline import Timings

    pipe = _pipeline(model, detector, strict_single_face, threads, flip, no_refine, face_policy, aligned)
    tag = ModelTag.of(pipe.spec, model)
    thr = threshold if threshold is not None else pipe.spec.threshold
    t = Timings()
    with Gallery(gallery_path, readonly=True) as g:
        embedded = pipe.embed_faces(image, t)
        g.matrix()  # load outside the timed match stage: a long-running device process keeps it in memory
        with t.stage("match"):
            found = [(e, g.identify(e.embedding, tag, top_k)) for e in embedded]
        size = len(g)

    def result(e: Any, matches: list[Any]) -> dict[str, Any]:
        best = matches[0] if matches else None
        accepted = best is not None and thr is not None and best.score >= thr
        return {
            "identity": best.name if best is not None and accepted else None,
            "score": best.score if best else None,
            "face": _face_json(e),
            "candidates": [{"name": m.name, "score": m.score, "templates": m.templates} for m in matches],
        }

    results = [result(e, m) for e, m in found]
    if as_json:
        first = results[0]
        _echo_json(
            {
                "identity": first["identity"],
                "score": first["score"],
                "threshold": thr,
                "gallery_templates": size,
                "face_policy": face_policy,
                "face": first["face"],
                "candidates": first["candidates"],
                "results": results,
                "timings_ms": t.ms,
            }
        )
        return
    for (e, matches), r in zip(found, results, strict=True):
        who = printable(r["identity"]) if r["identity"] is not None else "unknown"
        where = f" (face at box {_box(e)})" if face_policy == "all" and not aligned else ""
        emit(
            f"{who}{where}"
            + (f" (threshold {thr:.4f})" if thr is not None else " (no threshold: ranking only)")
        )
        for i, m in enumerate(matches, 1):
            emit(f"  {i}. {printable(m.name):<30} {m.score:.4f}  ({m.templates} template(s))")


@click.group("gallery")
def gallery_cmd() -> None:
    """List or remove enrolled identities."""


@gallery_cmd.command("list")
@gallery_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gallery_list(gallery_path: str | None, as_json: bool) -> None:
    """Identities, template counts and the model the gallery belongs to."""
    from edgeface.runtime.gallery import Gallery

    with Gallery(gallery_path, readonly=True) as g:
        rows, tag, path = g.identities(), g.model(), g.path
    if as_json:
        _echo_json(
            {
                "gallery": printable(path),
                "model": tag.__dict__ if tag else None,
                "identities": [{"name": r.name, "templates": r.templates} for r in rows],
            }
        )
        return
    emit(f"{printable(path)}: {len(rows)} identities, model {tag.describe() if tag else '(none yet)'}")
    for r in rows:  # escaped: a name with a newline in a crafted gallery cannot forge a line here
        emit(f"  {printable(r.name):<30} {r.templates} template(s)")


@gallery_cmd.command("remove")
@click.argument("name")
@gallery_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gallery_remove(name: str, gallery_path: str | None, as_json: bool) -> None:
    """Delete identity NAME and all its templates."""
    from edgeface.runtime.gallery import Gallery, clean_name

    name = clean_name(name)  # enroll stored it trimmed; remove finds it the same way
    with Gallery(gallery_path, create=False) as g:
        n = g.remove(name)
    if as_json:
        _echo_json({"removed": name, "templates": n})
        return
    emit(f"removed '{printable(name)}' ({n} template(s))")


@click.command("profile")
@click.argument("artifact", type=click.Path(), callback=resolve_model)
@artifact_name_option
@click.option(
    "--image",
    type=click.Path(dir_okay=False),
    default=None,
    help="Photo with a face for per-stage times (default: first ../shared raw_sample photo).",
)
@click.option(
    "--runs", type=Count(1, MAX_RUNS), default=50, show_default=True, help=f"Timed runs (at most {MAX_RUNS})."
)
@click.option(
    "--warmup", type=Count(0, MAX_RUNS), default=5, show_default=True, help="Untimed runs before them."
)
@click.option(
    "--max-seconds",
    type=SECONDS,
    default=DEFAULT_MAX_SECONDS,
    show_default=True,
    help="Time budget of the warm-up and timed runs; fewer runs are reported (with a warning) when it ends.",
)
@threads_option
@detector_option
@click.option("--no-operators", is_flag=True, help="Skip the per-operator profile.")
@no_refine_option
@click.option(
    "--gallery",
    "gallery_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Time the match stage as a 1:N search of this gallery (default: 1:1 cosine).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile_cmd(
    artifact: str,
    image: str | None,
    runs: int,
    warmup: int,
    max_seconds: float,
    threads: int | None,
    detector: str | None,
    no_operators: bool,
    no_refine: bool,
    gallery_path: str | None,
    as_json: bool,
) -> None:
    """Latency of ARTIFACT (an artifact file or a pack) and of the whole pipeline (benchmark_model /
    onnxruntime_perf_test style)."""
    from edgeface.runtime.profile import profile_artifact

    r = profile_artifact(
        artifact,
        image,
        runs,
        warmup,
        threads,
        detector,
        operators=not no_operators,
        progress=not as_json,
        refine_landmarks=refine_setting(no_refine),
        gallery=gallery_path,
        max_seconds=max_seconds,
    )
    if r["stopped_by_budget"]:
        click.echo(
            f"warning: --max-seconds {max_seconds:g} reached: {r['runs']} of {r['runs_requested']} runs",
            err=True,
        )
    if as_json:
        _echo_json(r)
        return
    s = r["inference_ms"]
    emit(
        f"{printable(Path(artifact).name)} ({r['backend']}, {r['precision']}), threads {r['threads']}, "
        f"{r['runs']} runs after {r['warmup_runs']} warm-up"
    )
    emit(
        f"init {r['init_ms']:.1f} ms, first inference {r['first_inference_ms']:.2f} ms, "
        f"peak RSS {r['peak_rss_mb']:.1f} MB"
    )
    # one table, the same order statistics for every row: on a busy machine the mean is dragged above the
    # p90 by a few stalls, and the minimum is the number to compare between runs (docs/runtime.md)
    emit(f"{'ms':<10}{'min':>9}{'p50':>9}{'p90':>9}")
    emit(f"{'inference':<10}{s['min']:9.3f}{s['p50']:9.3f}{s['p90']:9.3f}")
    if r["stages_ms"]:
        m = r["match"]
        where = f" over {m['templates']} templates" if "templates" in m else ""
        emit(f"pipeline on {printable(r['image'])}, match = {m['kind']}{where}:")
        rows = [*r["stages_ms"].items(), ("total", r["pipeline_ms"])]
        for stage, v in rows:
            emit(f"  {stage:<8}{v['min']:9.3f}{v['p50']:9.3f}{v['p90']:9.3f}")
    if r["operators"]:
        emit("operators (top 10 by time):")
        for o in r["operators"][:10]:
            emit(f"  {o['op']:<24} x{o['count']:<4} {o['ms_per_run']:8.3f} ms  {o['percent']:5.1f} %")
    elif r["operators_note"]:
        emit(f"operators: {r['operators_note']}")
