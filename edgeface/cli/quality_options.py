"""The face-quality gate's thresholds as command-line options, shared by `watch`, `enroll` and `verify`.

The options are collected into the click context (not passed as parameters), so a command gains the
gate with one decorator and one call, whatever its other options are. Defaults and meanings are those of
`edgeface.runtime.quality.QualityThresholds` (docs/watch.md); they are spelled out here so `--help` does
not import the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from edgeface.cli.options import FiniteFloat

META_KEY = "edgeface.quality"

# name, default, valid range, help (defaults equal QualityThresholds'; tests/test_quality.py checks that)
THRESHOLDS: tuple[tuple[str, float, FiniteFloat, str], ...] = (
    (
        "min_face_size",
        40.0,
        FiniteFloat(0.0, 1e5),
        "Smallest face (longer box side, px) the quality gate accepts.",
    ),
    (
        "min_sharpness",
        30.0,
        FiniteFloat(0.0, 1e6),
        "Least variance of the Laplacian of the aligned grey face.",
    ),
    (
        "max_yaw",
        0.5,
        FiniteFloat(0.0, 100.0),
        "Largest |yaw| (nose offset from the eyes' midpoint, in eye distances).",
    ),
    ("max_roll", 30.0, FiniteFloat(0.0, 180.0), "Largest |roll| (eye-line angle, degrees)."),
    ("min_detector_score", 0.7, FiniteFloat(0.0, 1.0), "Least detector confidence."),
    ("min_brightness", 40.0, FiniteFloat(0.0, 255.0), "Least mean grey level of the aligned face."),
    ("max_brightness", 220.0, FiniteFloat(0.0, 255.0), "Largest mean grey level of the aligned face."),
)


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(META_KEY, {})[param.name] = value
    return value


def quality_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add --min-face-size ... --max-brightness; read them back with `thresholds_from_context()`."""
    for name, default, kind, text in reversed(THRESHOLDS):
        f = click.option(
            "--" + name.replace("_", "-"),
            name,
            type=kind,
            default=default,
            show_default=True,
            expose_value=False,
            callback=_store,
            help=text,
        )(f)
    return f


def thresholds_from_context() -> Any:
    """The QualityThresholds the current command was given (validated: finite, >= 0, ordered)."""
    from edgeface.runtime.quality import QualityThresholds

    given = click.get_current_context().meta.get(META_KEY, {})
    return QualityThresholds(**{name: given.get(name, default) for name, default, _, _ in THRESHOLDS})


def enroll_gate(f: Callable[..., Any]) -> Callable[..., Any]:
    """`enroll`'s gate: the thresholds plus --allow-poor-quality."""
    f = click.option(
        "--allow-poor-quality",
        "allow_poor_quality",
        is_flag=True,
        expose_value=False,
        callback=_store,
        help="Enroll faces the quality gate refuses (blurred, small, turned, dark).",
    )(f)
    return quality_options(f)


def verify_gate(f: Callable[..., Any]) -> Callable[..., Any]:
    """`verify`'s gate, off unless asked for: the thresholds plus --check-quality."""
    f = click.option(
        "--check-quality",
        "check_quality",
        is_flag=True,
        expose_value=False,
        callback=_store,
        help="Refuse faces the quality gate fails instead of comparing them.",
    )(f)
    return quality_options(f)


def check_faces(embedded: list[Any], what: str) -> None:
    """Apply the gate to `Pipeline.embed_image` results, if the command's options ask for it.

    enroll: on unless --allow-poor-quality; verify: off unless --check-quality. A refused face is one
    `EdgefaceError` naming the image and every failed measurement, so nothing is written.
    """
    from edgeface.errors import EdgefaceError
    from edgeface.io import printable
    from edgeface.runtime.preprocess import read_image
    from edgeface.runtime.quality import assess

    given = click.get_current_context().meta.get(META_KEY, {})
    if given.get("allow_poor_quality") or ("check_quality" in given and not given["check_quality"]):
        return
    thresholds = thresholds_from_context()
    bad = []
    for e in embedded:
        q = assess(read_image(e.path), e.face, thresholds)
        if not q.passed:
            bad.append(f"{printable(e.path)}: {q.describe()}")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        hint = (
            "use a sharper, larger, frontal, well-lit photo, or pass --allow-poor-quality"
            if what == "enroll"
            else "use better photos, or drop --check-quality"
        )
        done = {"enroll": "enrolled", "verify": "compared"}.get(what, what)
        raise EdgefaceError(f"poor face quality, not {done}: {bad[0]}{more}; {hint}")
