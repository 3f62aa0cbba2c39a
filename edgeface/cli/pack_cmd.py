"""`edgeface pack`: artifacts + detector + licences + manifest in one folder (and optionally one archive).

Runtime-only like verify: a device or a CI job without torch can pack, check and re-pack. `edgeface export`
calls the same writer (edgeface.runtime.pack_write) at its end, with the options defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeface.io import dumps_json, emit, printable


def pack_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--detector, --license, --detector-license, --archive: shared by `pack` and `export`."""
    for opt in reversed(
        [
            click.option(
                "--detector",
                type=click.Path(dir_okay=False),
                default=None,
                help="YuNet ONNX file the pack holds (default: that of a pack the artifacts come from, else "
                "$EDGEFACE_YUNET, else ../shared/models/face_detection_yunet_2026may.onnx).",
            ),
            click.option(
                "--license",
                "licenses",
                type=click.Path(dir_okay=False),
                multiple=True,
                help="Licence of the model (repeatable). Default for export: LICENSE.<weights name>, or the "
                "only LICENSE* file, beside --weights; for pack: the licences of the pack an artifact comes "
                "from.",
            ),
            click.option(
                "--detector-license",
                type=click.Path(dir_okay=False),
                default=None,
                help="Licence of the detector (default: the YuNet licence edgeface ships).",
            ),
            click.option(
                "--archive",
                type=click.Path(dir_okay=False),
                default=None,
                help="Also write the pack as one file: .tar.gz, .tgz, .tar or .zip.",
            ),
        ]
    ):
        f = opt(f)
    return f


def check_archive(archive: str | None) -> None:
    """Before anything is written: --archive has a name we can write as an archive."""
    if archive is None:
        return
    from edgeface.errors import EdgefaceError
    from edgeface.io import check_output_file
    from edgeface.runtime.pack import ARCHIVE_SUFFIXES, is_archive

    if not is_archive(archive):
        raise EdgefaceError(
            f"--archive {printable(archive)}: the name must end in one of {', '.join(ARCHIVE_SUFFIXES)}"
        )
    check_output_file(archive)


def describe(pack: Any, archive: Path | None) -> list[str]:
    d = pack.describe()
    mb = d["bytes"] / 1e6
    mesh = f", landmark model {d['landmarker']}" if d["landmarker"] else ""
    lines = [
        f"pack {printable(pack.source)}: {len(d['artifacts'])} artifact(s) "
        f"(default {d['default_artifact']}), detector {d['detector']}{mesh}, "
        f"{len(d['licenses'])} licence(s), {d['files']} files, {mb:.2f} MB"
    ]
    if archive is not None:
        lines.append(f"archive {printable(archive)} ({archive.stat().st_size / 1e6:.2f} MB)")
    return lines


def _details(pack: Any) -> list[str]:
    m = pack.manifest
    lines = [f"  written by edgeface {m.edgeface_version} at {m.created}"]
    for a in m.artifacts:
        mark = "  (default)" if a.file == m.default_artifact else ""
        lines.append(f"  artifact {a.file}: {a.model}, {a.precision}, {a.format}, {a.embedding_dim}-d{mark}")
    lines.append(f"  detector {m.detector}")
    if m.landmarker:
        lines.append(f"  landmark model {m.landmarker}")
    for lic in m.licenses:
        lines.append(f"  licence {lic.file} covers {', '.join(lic.covers)}; {lic.origin}")
    uncovered = [a.file for a in m.artifacts if not any(a.file in lic.covers for lic in m.licenses)]
    if uncovered:
        lines.append(f"  no licence recorded for: {', '.join(uncovered)}")
    return [printable(line) for line in lines]


@click.command("pack")
@click.argument("artifacts", nargs=-1, type=click.Path())
@click.option(
    "--output",
    "-o",
    "outdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Pack folder to write: a new or empty folder, the folder holding the artifacts, or an existing "
    "pack (the artifacts are added to it; same names are replaced).",
)
@pack_options
@click.option("--default", "default", default=None, help="Artifact file name --model PACK takes by default.")
@click.option(
    "--landmarker",
    type=click.Path(dir_okay=False),
    default=None,
    help="Face-mesh landmark model (MediaPipe face_landmark.tflite) the pack carries: the runtime then "
    "takes landmarks from it (as --landmarker) wherever the pack runs. Default: a source pack's.",
)
@click.option(
    "--landmarker-license",
    type=click.Path(dir_okay=False),
    default=None,
    help="Licence file of --landmarker (required with it: a pack records every model's licence).",
)
@click.option(
    "--check",
    "check",
    type=click.Path(),
    default=None,
    help="Instead: check every file of this pack (folder or archive) against its manifest and list it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pack_cmd(
    artifacts: tuple[str, ...],
    outdir: str | None,
    detector: str | None,
    licenses: tuple[str, ...],
    detector_license: str | None,
    archive: str | None,
    default: str | None,
    landmarker: str | None,
    landmarker_license: str | None,
    check: str | None,
    as_json: bool,
) -> None:
    """Write a pack of ARTIFACT... (.onnx/.tflite files or packs) into -o DIR: the artifacts and their
    specs, the face detector, the licences and a manifest with the SHA-256 of every file. `--model DIR`
    then runs it anywhere, with no other file. `--check PACK` verifies an existing pack instead."""
    from edgeface.errors import EdgefaceError
    from edgeface.runtime.pack import open_pack

    if check is not None:
        if artifacts or outdir or archive:
            raise EdgefaceError("--check takes only the pack to check (no ARTIFACT, -o or --archive)")
        pack = open_pack(check)
        pack.verify()
        if as_json:
            emit(dumps_json({**pack.describe(), "verified": True}))
            return
        emit(f"pack {printable(pack.source)}: all {len(pack.manifest.files)} files match the manifest")
        for line in _details(pack):
            emit(line)
        return
    if not artifacts:
        raise EdgefaceError("name the artifacts (or packs) to pack, or --check PACK")
    if outdir is None:
        raise EdgefaceError("missing option '-o' / '--output': the pack folder to write")
    from edgeface.runtime.pack_write import license_source, model_license, write_pack

    check_archive(archive)

    written = write_pack(
        outdir,
        list(artifacts),
        detector=detector,
        licenses=model_license(licenses),
        detector_license=license_source(detector_license, "--detector-license") if detector_license else None,
        default=default,
        merge=True,
        warn=lambda m: click.echo(f"warning: {printable(m)}", err=True),
        landmarker=landmarker,
        landmarker_license=(
            license_source(landmarker_license, "--landmarker-license") if landmarker_license else None
        ),
    )
    archive_path = None
    if archive:
        from edgeface.runtime.pack_archive import write_archive

        archive_path = write_archive(written, archive)
    if as_json:
        emit(dumps_json({**written.describe(), "archive": printable(archive_path) if archive_path else None}))
        return
    for line in describe(written, archive_path):
        emit(line)
