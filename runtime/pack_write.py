"""Writing a pack folder: what `edgeface pack` does, and what `edgeface export` does at its end.

All or nothing, like every edgeface output: new files are written into a hidden staging folder inside the
pack folder, hashed there, and renamed into place only when every one is complete, the manifest last, so
a reader never finds a manifest whose files are not there yet. Artifacts already inside the pack folder
(an export's own output) are hashed where they are, not copied.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeface.runtime.pack import (
    ARTIFACT_FORMATS,
    LICENSES_DIR,
    MANIFEST,
    ArtifactEntry,
    FileEntry,
    LicenseEntry,
    Manifest,
    Pack,
    find_pack,
    is_pack,
    open_pack,
    rank,
    safe_name,
    sha256_file,
)

from edgeface.errors import EdgefaceError
from edgeface.io import os_errors, printable
from edgeface.spec import ModelSpec

BUNDLED_DETECTOR_LICENSE = Path(__file__).resolve().parent / "licenses" / "LICENSE.yunet"
BUNDLED_DETECTOR_ORIGIN = (
    "edgeface's copy of the YuNet licence (MIT; OpenCV model zoo, models/face_detection_yunet/LICENSE)"
)
STAGE_PREFIX = ".edgeface-pack-"


@dataclass(frozen=True)
class LicenseSource:
    """A licence text to put in the pack and where it came from (written into the manifest)."""

    path: Path
    origin: str


@dataclass
class _Input:
    src: Path  # the artifact file
    name: str  # its name in the pack
    spec: ModelSpec
    licenses: list[LicenseSource] = field(default_factory=list)  # carried over from a source pack


@dataclass
class _Plan:
    out: Path
    stage: Path
    files: dict[str, Path] = field(default_factory=dict)  # pack name -> where its bytes are now


def _warn_stderr(msg: str) -> None:
    import sys

    print(f"warning: {msg}", file=sys.stderr)


def write_pack(
    out: str | os.PathLike[str],
    artifacts: Sequence[str | os.PathLike[str]],
    detector: str | os.PathLike[str] | None = None,
    licenses: Sequence[LicenseSource] = (),
    detector_license: LicenseSource | None = None,
    default: str | None = None,
    merge: bool = False,
    warn: Callable[[str], None] = _warn_stderr,
    landmarker: str | os.PathLike[str] | None = None,
    landmarker_license: LicenseSource | None = None,
) -> Pack:
    """Make `out` a pack of `artifacts` (files, or packs whose artifacts, licences and detector are taken).

    `licenses` cover every artifact given; an artifact taken from a pack keeps that pack's licences too.
    `detector`: the YuNet file (default: a source pack's, else the runtime's default path); its licence is
    `detector_license`, else a source pack's, else the copy edgeface ships. `default`: the artifact
    `--model PACK` takes (default: the int8 ONNX among those given, see pack.rank). `merge` (export):
    artifacts a previous manifest in `out` listed stay in the pack when their files are unchanged.
    `landmarker`: a face-mesh landmark model (runtime.landmarks) the runtime then refines landmarks with
    (default: a source pack's, or with `merge` the previous pack's; else none), with its licence
    `landmarker_license` (or the source pack's): required, edgeface ships no licence for it.
    """
    out = Path(out)
    for lic in [
        *licenses,
        *([detector_license] if detector_license else []),
        *([landmarker_license] if landmarker_license else []),
    ]:
        if not lic.path.is_file():  # before anything is written
            raise EdgefaceError(f"licence file not found: {printable(lic.path)}")
    inputs, source_det, source_mesh = _collect(artifacts)
    det_src, det_lic = _detector(detector, source_det, detector_license)
    if source_mesh is None and merge:
        source_mesh = _previous_landmarker(out)
    mesh = _landmarker(landmarker, source_mesh, landmarker_license)
    _check_out(out, inputs)
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EdgefaceError(f"two artifacts would be named {printable(dup)} in the pack; rename one")
    det_name = safe_name(det_src.name)
    if det_name in names or any(det_name == n + ".json" for n in names):
        raise EdgefaceError(f"the detector's name {printable(det_name)} clashes with an artifact's")
    mesh_name = safe_name(mesh[0].name) if mesh else None
    if mesh_name is not None and (
        mesh_name in names or mesh_name == det_name or any(mesh_name == n + ".json" for n in names)
    ):
        raise EdgefaceError(f"the landmark model's name {printable(mesh_name)} clashes with another file's")
    if default is not None and default not in names:
        raise EdgefaceError(
            f"--default {printable(default)} is not one of the packed artifacts: {', '.join(names)}"
        )
    with os_errors("create pack folder", out):
        out.mkdir(parents=True, exist_ok=True)
    kept = _kept(out, names, det_name, warn) if merge else []
    with os_errors("write into pack folder", out):
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    plan = _Plan(out, stage)
    try:
        entries: list[ArtifactEntry] = []
        for i in kept + inputs:
            _place(plan, i.src, i.name)
            _write_text(plan, i.name + ".json", i.spec.to_json() + "\n")
            fmt = ARTIFACT_FORMATS[Path(i.name).suffix.lower()]
            spec = i.spec
            entries.append(
                ArtifactEntry(i.name, i.name + ".json", fmt, spec.name, spec.precision, spec.embedding_dim)
            )
        _place(plan, det_src, det_name)
        models = [(det_name, det_lic)]
        if mesh is not None and mesh_name is not None:
            _place(plan, mesh[0], mesh_name)
            models.append((mesh_name, mesh[1]))
        lic_entries = _licenses(plan, kept, inputs, licenses, models, warn)
        files = {name: _entry(path, name) for name, path in plan.files.items()}
        manifest = Manifest(
            edgeface_version=_version(),
            created=_now(),
            default_artifact=default or rank(entries[len(kept) :]).file,
            artifacts=tuple(entries),
            detector=det_name,
            licenses=tuple(lic_entries),
            files=files,
            landmarker=mesh_name,
        )
        (stage / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        _commit(plan)
    except OSError as e:
        raise EdgefaceError(f"cannot write pack {printable(out)}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Pack(Path(os.path.realpath(out)), manifest, out)


# --- inputs ----------------------------------------------------------------------------------------------
_Model = tuple[Path, LicenseSource | None]  # a model file of a source pack, with its licence


def _collect(
    artifacts: Sequence[str | os.PathLike[str]],
) -> tuple[list[_Input], _Model | None, _Model | None]:
    """The artifacts to pack, and the detector and landmark model (with their licences) of the first
    source pack that has one, if any."""
    if not artifacts:
        raise EdgefaceError("nothing to pack: name at least one artifact (.onnx or .tflite) or pack")
    inputs: list[_Input] = []
    detector = None
    mesh = None
    for a in artifacts:
        path = Path(a)
        if is_pack(path):
            pack = open_pack(path)
            for entry in pack.manifest.artifacts:
                pack.verify_for(entry)
                src = pack.file(entry.file)
                inputs.append(_Input(src, entry.file, _spec_of(src), _carried(pack, entry.file)))
            detector = detector or _pack_detector(pack)
            mesh = mesh or _pack_landmarker(pack)
            continue
        if not path.is_file():
            raise EdgefaceError(f"artifact not found: {printable(path)}")
        if path.suffix.lower() not in ARTIFACT_FORMATS:
            raise EdgefaceError(
                f"{printable(path)}: not an artifact (expected .onnx or .tflite, or a pack folder or archive)"
            )
        carried: list[LicenseSource] = []
        found = find_pack(path)
        if found is not None:
            pack, entry = found
            pack.verify_for(entry)
            carried = _carried(pack, entry.file)
            detector = detector or _pack_detector(pack)
            mesh = mesh or _pack_landmarker(pack)
        inputs.append(_Input(path, safe_name(path.name), _spec_of(path), carried))
    return inputs, detector, mesh


def _carried(pack: Pack, name: str) -> list[LicenseSource]:
    out = []
    for lic in pack.manifest.licenses:
        if name in lic.covers:
            pack.verify([lic.file])
            out.append(LicenseSource(pack.file(lic.file), lic.origin))
    return out


def _pack_detector(pack: Pack) -> _Model:
    pack.verify([pack.manifest.detector])
    lic = _carried(pack, pack.manifest.detector)
    return pack.detector_path, (lic[0] if lic else None)


def _pack_landmarker(pack: Pack) -> _Model | None:
    name = pack.manifest.landmarker
    if name is None:
        return None
    pack.verify([name])
    lic = _carried(pack, name)
    return pack.file(name), (lic[0] if lic else None)


def _previous_landmarker(out: Path) -> _Model | None:
    """With `merge` (an export into its pack folder): the landmark model the previous manifest listed, so
    re-exporting does not drop it; none when it is unreadable or changed (as for artifacts in `_kept`)."""
    if not (out / MANIFEST).exists():
        return None
    try:
        return _pack_landmarker(open_pack(out))
    except EdgefaceError:
        return None


def _model_source(
    given: str | os.PathLike[str] | None, from_pack: _Model | None
) -> tuple[Path | None, LicenseSource | None]:
    """A model file a pack will hold (detector, landmark model): the one the user named, else a source
    pack's with the licence it carried there; (None, None) when neither."""
    if given:
        return Path(given), None
    return from_pack if from_pack is not None else (None, None)


def _landmarker(
    given: str | os.PathLike[str] | None, from_pack: _Model | None, license: LicenseSource | None
) -> tuple[Path, LicenseSource] | None:
    """The landmark model a pack will hold, loaded once to refuse a file that is not one, with its
    licence (required: a pack records the licence of every model in it)."""
    from edgeface.runtime.landmarks import MeshLandmarker

    path, carried = _model_source(given, from_pack)
    if path is None:
        if license is not None:
            raise EdgefaceError("--landmarker-license names the licence of a --landmarker model: give both")
        return None
    if path.suffix.lower() != ".tflite":
        raise EdgefaceError(f"--landmarker {printable(path)}: expected a face-mesh .tflite file")
    if given:  # a source pack's was hash-checked against its manifest; loading it would need LiteRT here
        MeshLandmarker(path)  # missing, unreadable or not a face-mesh model: one error line, nothing written
    lic = license or carried
    if lic is None:
        raise EdgefaceError(
            f"no licence for the landmark model {printable(path)}: pass --landmarker-license FILE "
            "(MediaPipe's face_landmark.tflite is Apache-2.0: the LICENSE in its wheel's .dist-info)"
        )
    return path, lic


def _spec_of(path: Path) -> ModelSpec:
    """The spec the runtime would use for `path`, read by loading it (so a broken artifact is not packed).
    A .tflite file is read without LiteRT when it is not installed: its embedded spec, else its sidecar."""
    from edgeface.runtime.backends import OnnxArtifact, TfliteArtifact, resolve_spec, tflite_metadata

    if path.suffix.lower() == ".onnx":
        return OnnxArtifact(path, num_threads=1).spec
    try:
        return TfliteArtifact(path, num_threads=1).spec
    except EdgefaceError as e:
        if "needs ai-edge-litert" not in str(e):
            raise
    from edgeface.spec import METADATA_KEY

    try:
        embedded = tflite_metadata(path.read_bytes()).get(METADATA_KEY)
        text = embedded.decode("utf-8") if embedded is not None else None
    except (OSError, ValueError, IndexError) as err:
        raise EdgefaceError(f"{printable(path)}: not a readable TFLite file ({err})") from None
    return resolve_spec(path, text)


def license_source(path: str | os.PathLike[str], option: str) -> LicenseSource:
    """A licence file the user named with `option`, checked to exist."""
    p = Path(path)
    if not p.is_file():
        raise EdgefaceError(f"{option} {printable(p)}: licence file not found")
    return LicenseSource(p, f"given with {option} ({safe_name(p.name)})")


def model_license(
    given: Sequence[str | os.PathLike[str]], weights: str | os.PathLike[str] | None = None
) -> list[LicenseSource]:
    """The licences of the model being packed: the files given (--license), else the one found beside the
    weights it was exported from: `LICENSE.<weights name>` (how ../shared names them), else the only
    LICENSE*/LICENCE*/COPYING* file in that folder. None found: an empty list (the writer warns)."""
    if given:
        return [license_source(g, "--license") for g in given]
    if weights is None:
        return []
    w = Path(weights)
    exact = w.parent / f"LICENSE.{w.stem}"
    if exact.is_file():
        return [LicenseSource(exact, f"found beside the weights {safe_name(w.name)} ({exact.name})")]
    try:
        found = [
            p
            for p in w.parent.iterdir()
            if p.is_file() and p.name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))
        ]
    except OSError:
        return []
    if len(found) == 1:
        return [LicenseSource(found[0], f"found beside the weights {safe_name(w.name)} ({found[0].name})")]
    return []


def check_detector(
    given: str | os.PathLike[str] | None, license: str | os.PathLike[str] | None = None
) -> tuple[Path, LicenseSource | None]:
    """Before a slow export: the detector a pack will hold exists and loads, and its licence file exists.
    Returns what `write_pack(detector=..., detector_license=...)` takes."""
    lic = license_source(license, "--detector-license") if license is not None else None
    path, _ = _detector(given, None, lic)
    return path, lic


def _detector(
    given: str | os.PathLike[str] | None,
    from_pack: _Model | None,
    license: LicenseSource | None,
) -> tuple[Path, LicenseSource]:
    from edgeface.runtime.detect import YuNetDetector, default_detector_path

    path, carried = _model_source(given, from_pack)
    if path is None:
        path = default_detector_path()
    if not path.is_file():
        raise EdgefaceError(
            f"face detector model not found: {printable(path)}; a pack holds its detector, so pass "
            "--detector FILE (a YuNet .onnx)"
        )
    if path.suffix.lower() != ".onnx":
        raise EdgefaceError(f"--detector {printable(path)}: expected a YuNet .onnx file")
    YuNetDetector(path)  # refuses a file that is not a loadable YuNet model, before anything is written
    return path, license or carried or LicenseSource(BUNDLED_DETECTOR_LICENSE, BUNDLED_DETECTOR_ORIGIN)


def _check_out(out: Path, inputs: list[_Input]) -> None:
    """A pack goes into a new or empty folder, an existing pack, or the folder that holds its artifacts
    (packing an export's output in place); never into an unrelated folder full of other files."""
    if out.exists() and not out.is_dir():
        raise EdgefaceError(f"pack folder {printable(out)} exists and is not a folder")
    if not out.is_dir() or (out / MANIFEST).exists():
        return
    with os_errors("read", out):
        others = [p for p in out.iterdir() if not p.name.startswith(STAGE_PREFIX)]
    inside = any(os.path.realpath(i.src.parent) == os.path.realpath(out) for i in inputs)
    if others and not inside:
        raise EdgefaceError(
            f"{printable(out)} is not empty and is not a pack; write the pack into a new folder"
        )


def _kept(out: Path, new: list[str], det_name: str, warn: Callable[[str], None]) -> list[_Input]:
    """From a previous manifest in `out`: the artifacts not replaced now whose files are unchanged, with
    their licences."""
    if not (out / MANIFEST).exists():
        return []
    try:
        old = open_pack(out)
    except EdgefaceError as e:
        warn(f"the previous pack manifest in {printable(out)} is unreadable and is replaced ({e})")
        return []
    kept = []
    for a in old.manifest.artifacts:
        if a.file in new or a.file == det_name:
            continue
        try:
            old.verify([a.file, a.spec])
            kept.append(_Input(old.file(a.file), a.file, _spec_of(old.file(a.file)), _carried(old, a.file)))
        except EdgefaceError:
            warn(f"{a.file} changed since it was packed; it is left out of the new manifest")
    return kept


# --- staging ---------------------------------------------------------------------------------------------
def _in_place(plan: _Plan, src: Path, name: str) -> bool:
    return os.path.realpath(src) == os.path.realpath(plan.out / name)


def _place(plan: _Plan, src: Path, name: str) -> None:
    if _in_place(plan, src, name):
        plan.files[name] = plan.out / name
        return
    dest = plan.stage / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with os_errors("copy", src):
        shutil.copyfile(src, dest)
    plan.files[name] = dest


def _write_text(plan: _Plan, name: str, text: str) -> None:
    dest = plan.stage / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    plan.files[name] = dest


def _licenses(
    plan: _Plan,
    kept: list[_Input],
    inputs: list[_Input],
    given: Sequence[LicenseSource],
    models: Sequence[tuple[str, LicenseSource]],
    warn: Callable[[str], None],
) -> list[LicenseEntry]:
    covers: dict[str, tuple[LicenseSource, list[str]]] = {}  # pack name -> (source, covered files)

    def add(src: LicenseSource, covered: str) -> None:
        if not src.path.is_file():
            raise EdgefaceError(f"licence file not found: {printable(src.path)}")
        digest = sha256_file(src.path, "licence")[0]
        for s, c in covers.values():
            if sha256_file(s.path, "licence")[0] == digest:
                if covered not in c:
                    c.append(covered)
                return
        base = f"{LICENSES_DIR}/{safe_name(src.path.name)}"
        name, n = base, 2
        while name in covers:
            name, n = f"{base}-{n}", n + 1
        covers[name] = (src, [covered])

    for i in kept:
        for src in i.licenses:
            add(src, i.name)
    for i in inputs:
        sources = list(given) + i.licenses
        if not sources:
            warn(f"no licence for {i.name}: pass --license FILE (the pack records none for it)")
        for src in sources:
            add(src, i.name)
    for name, lic in models:  # the detector and the landmark model
        add(lic, name)
    entries = []
    for name, (src, covered) in covers.items():
        _place(plan, src.path, name)
        entries.append(LicenseEntry(name, tuple(covered), src.origin))
    return entries


def _entry(path: Path, name: str) -> FileEntry:
    digest, size = sha256_file(path, f"pack file {name}")
    return FileEntry(digest, size)


def _commit(plan: _Plan) -> None:
    """Staged files into place, the manifest last."""
    for name, path in plan.files.items():
        if plan.stage not in path.parents:
            continue  # in place already
        dest = plan.out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    os.replace(plan.stage / MANIFEST, plan.out / MANIFEST)


def _now() -> str:
    """UTC, or $SOURCE_DATE_EPOCH for reproducible packs."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    from edgeface import __version__

    return __version__
