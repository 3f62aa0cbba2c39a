"""Deployable packs: one folder (or one archive of it) holding everything a device needs.

A pack is what `edgeface export` leaves in its output folder and what `edgeface pack` writes: the
artifacts with their spec sidecars, the face detector, the licences of every model in it, and a manifest
(`edgeface-pack.json`) with the SHA-256 and size of every file and the edgeface version that wrote it.
`--model PACK` takes the artifact from it (the manifest's default, or `--artifact NAME`) and the runtime
takes the detector from it, so a device needs nothing else: no `../shared`, no `$EDGEFACE_YUNET`.

The manifest is data (docs/security.md): its file names are checked before any path is built from them
(relative, no `..`, no hidden or absolute names, at most one folder deep), every file it names must be a
regular file inside the pack (a symbolic link is refused, wherever it points), and the files a command
uses are hashed before they are loaded, so a truncated or changed file is one `error:` line, never a
model that silently answers differently. The hashes protect against damage and mix-ups, not against
someone who can rewrite the manifest too: the manifest is not signed.

Layout (version 1):

    edgeface-pack.json                      the manifest (below)
    mobilefacenet_int8.onnx[.json]          artifacts and their spec sidecars, at the top
    face_detection_yunet_2026may.onnx       the detector, at the top
    face_landmark.tflite                    optional: a face-mesh landmark model (runtime.landmarks)
    licenses/LICENSE.mobilefacenet_ms1m     licence texts; the manifest says what each covers and
    licenses/LICENSE.yunet                  where it came from

Stdlib only at import (the runtime imports no torch, and `--help` stays fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeface.errors import EdgefaceError
from edgeface.io import printable

MANIFEST = "edgeface-pack.json"
FORMAT = "edgeface-pack"
VERSION = 1
LICENSES_DIR = "licenses"
LANDMARKER_KIND = "face-mesh"
ARTIFACT_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
PRECISIONS = ("fp32", "w8a8", "w6a6", "mixed")
# The default artifact when the writer is not told: int8 first (what a device is exported for), ONNX first
# (the base install runs it; .tflite needs the tflite extra).
PRECISION_RANK = ("w8a8", "w6a6", "mixed", "fp32")
FORMAT_RANK = ("onnx", "tflite")
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 1000
MAX_FILE_BYTES = 1 << 36  # 64 GiB: larger than any model, small enough to be a sane number
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")
# characters a file name in a pack may not hold: path separators, a drive colon, control characters
_BAD_CHARS = re.compile(r"[/\\:\x00-\x1f\x7f]")


def check_name(name: object, where: str, depth: int = 2) -> str:
    """A file name from a manifest or an archive, refused unless it is plainly a file inside the pack:
    relative, `/`-separated, at most `depth` parts, none empty, `.`-led (`.`, `..`, hidden), or holding a
    backslash, colon or control character. Names are compared as written, never normalised."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise EdgefaceError(f"{where}: file name {printable(repr(name))[:80]} is not a pack file name")
    parts = name.split("/")
    if len(parts) > depth or any(not p or p.startswith(".") or _BAD_CHARS.search(p) for p in parts):
        raise EdgefaceError(
            f"{where}: file name '{printable(name)}' is not allowed in a pack (names are relative, at most "
            f"{depth} level(s) deep, with no '..', hidden, absolute or drive-letter parts)"
        )
    return name


def safe_name(name: str) -> str:
    """`name` made acceptable to `check_name` as a top-level file (the writer's side of the same rule)."""
    clean = _BAD_CHARS.sub("_", name).lstrip(".") or "file"
    return clean[-MAX_NAME_CHARS:]


def is_archive(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def is_pack(path: str | os.PathLike[str]) -> bool:
    """Does `path` name a pack (a folder with a manifest, or an archive file) rather than an artifact?
    For callers that choose between a PyTorch model reference and something the runtime loads."""
    p = Path(path)
    return (p.is_dir() and (p / MANIFEST).exists()) or (is_archive(p) and p.is_file())


# --- the manifest -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class ArtifactEntry:
    file: str
    spec: str
    format: str
    model: str  # the spec's name, for listings; what runs is the artifact's own spec
    precision: str
    embedding_dim: int


@dataclass(frozen=True)
class LicenseEntry:
    file: str
    covers: tuple[str, ...]  # the artifact and detector files this licence applies to
    origin: str  # where the writer found it (a path given with --license, a file beside the weights, ...)


@dataclass(frozen=True)
class Manifest:
    edgeface_version: str
    created: str
    default_artifact: str
    artifacts: tuple[ArtifactEntry, ...]
    detector: str
    licenses: tuple[LicenseEntry, ...]
    files: dict[str, FileEntry] = field(default_factory=dict)
    landmarker: str | None = None  # a face-mesh landmark model (runtime.landmarks), optional

    def artifact(self, name: str) -> ArtifactEntry | None:
        return next((a for a in self.artifacts if a.file == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "edgeface_version": self.edgeface_version,
            "created": self.created,
            "default_artifact": self.default_artifact,
            "artifacts": [a.__dict__ for a in self.artifacts],
            "detector": {"file": self.detector, "kind": "yunet"},
            **({"landmarker": {"file": self.landmarker, "kind": LANDMARKER_KIND}} if self.landmarker else {}),
            "licenses": [{**lic.__dict__, "covers": list(lic.covers)} for lic in self.licenses],
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        def refuse(_: str) -> None:
            raise ValueError("NaN and Infinity are not JSON")

        try:
            data = json.loads(text, parse_constant=refuse)
        except ValueError as e:
            raise EdgefaceError(f"{where}: not a valid pack manifest ({str(e)[:120]})") from None
        return _parse_manifest(data, where)


def _parse_manifest(data: Any, where: str) -> Manifest:
    """Every field checked for type and range before anything is built from it."""

    def fail(msg: str) -> None:
        raise EdgefaceError(f"{where}: {msg}")

    def text(obj: dict[str, Any], key: str, limit: int = MAX_TEXT_CHARS) -> str:
        v = obj.get(key)
        if not isinstance(v, str) or not v or len(v) > limit:
            fail(f"'{key}' must be a non-empty string of at most {limit} characters")
        return v  # type: ignore[return-value]

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fail(f'not an edgeface pack manifest (no "format": "{FORMAT}")')
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        fail("'version' must be an integer")
    if version > VERSION:
        fail(f"pack version {version} was written by a newer edgeface; this one reads version {VERSION}")
    if version < 1:
        fail(f"'version' {version} is not a pack version")
    files_raw = data.get("files")
    if not isinstance(files_raw, dict) or not files_raw or len(files_raw) > MAX_FILES:
        fail(f"'files' must map 1 to {MAX_FILES} file names to their sha256 and size")
    files: dict[str, FileEntry] = {}
    for name, entry in files_raw.items():
        check_name(name, where)
        if name == MANIFEST:
            fail(f"'files' lists the manifest {MANIFEST} itself")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size"}:
            fail(f"'files' entry of '{printable(name)}' must be {{\"sha256\": ..., \"size\": ...}}")
        digest, size = entry["sha256"], entry["size"]
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            fail(f"sha256 of '{printable(name)}' is not 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
            fail(f"size of '{printable(name)}' must be an integer in [0, {MAX_FILE_BYTES}]")
        files[name] = FileEntry(digest, size)

    def listed(name: Any, what: str, top: bool = True) -> str:
        check_name(name, where, depth=1 if top else 2)
        if name not in files:
            fail(f"{what} '{printable(name)}' is not among the manifest's files")
        return name  # type: ignore[no-any-return]

    arts_raw = data.get("artifacts")
    if not isinstance(arts_raw, list) or not arts_raw or len(arts_raw) > MAX_FILES:
        fail("'artifacts' must be a non-empty list")
    artifacts = []
    for a in arts_raw:
        if not isinstance(a, dict):
            fail("each of 'artifacts' must be an object")
        name = listed(a.get("file"), "artifact")
        suffix = Path(name).suffix.lower()
        if suffix not in ARTIFACT_FORMATS or a.get("format") != ARTIFACT_FORMATS[suffix]:
            fail(f"artifact '{printable(name)}' must be .onnx (format onnx) or .tflite (format tflite)")
        spec = listed(a.get("spec"), f"spec of {name}")
        precision = a.get("precision")
        if precision not in PRECISIONS:
            fail(f"precision of '{printable(name)}' must be one of {', '.join(PRECISIONS)}")
        dim = a.get("embedding_dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
            fail(f"embedding_dim of '{printable(name)}' must be an integer in [1, 65536]")
        artifacts.append(ArtifactEntry(name, spec, a["format"], text(a, "model", 512), precision, dim))
    if len({a.file for a in artifacts}) != len(artifacts):
        fail("an artifact is listed twice")
    default = data.get("default_artifact")
    if not any(a.file == default for a in artifacts):
        fail(f"default_artifact '{printable(str(default))[:80]}' is not one of the pack's artifacts")
    det = data.get("detector")
    if not isinstance(det, dict) or det.get("kind") != "yunet":
        fail('\'detector\' must be {"file": ..., "kind": "yunet"}')
    detector = listed(det.get("file"), "detector")  # type: ignore[union-attr]
    if not detector.lower().endswith(".onnx"):
        fail(f"detector '{printable(detector)}' must be a YuNet .onnx file")
    landmarker = None
    mesh = data.get("landmarker")
    if mesh is not None:
        if not isinstance(mesh, dict) or mesh.get("kind") != LANDMARKER_KIND:
            fail(f'\'landmarker\' must be {{"file": ..., "kind": "{LANDMARKER_KIND}"}}')
        landmarker = listed(mesh.get("file"), "landmarker")  # type: ignore[union-attr]
        if not landmarker.lower().endswith(".tflite"):
            fail(f"landmarker '{printable(landmarker)}' must be a .tflite file")
    lic_raw = data.get("licenses", [])
    if not isinstance(lic_raw, list) or len(lic_raw) > MAX_FILES:
        fail("'licenses' must be a list")
    models = {a.file for a in artifacts} | {detector} | ({landmarker} if landmarker else set())
    licenses = []
    for lic in lic_raw:
        if not isinstance(lic, dict):
            fail("each of 'licenses' must be an object")
        file = listed(lic.get("file"), "licence", top=False)
        covers = lic.get("covers")
        if not isinstance(covers, list) or not covers or any(c not in models for c in covers):
            fail(f"licence '{printable(file)}' must cover a list of the pack's artifacts or models")
        licenses.append(LicenseEntry(file, tuple(covers), text(lic, "origin")))
    return Manifest(
        edgeface_version=text(data, "edgeface_version", 64),
        created=text(data, "created", 64),
        default_artifact=default,  # type: ignore[arg-type]
        artifacts=tuple(artifacts),
        detector=detector,
        licenses=tuple(licenses),
        files=files,
        landmarker=landmarker,
    )


# --- reading ---------------------------------------------------------------------------------------------
def sha256_file(path: Path, where: str) -> tuple[str, int]:
    """(hex digest, bytes read) of a regular file opened without following a symbolic link."""
    digest, size = hashlib.sha256(), 0
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise EdgefaceError(f"{where}: cannot read {printable(path.name)} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# Files hashed in this process, so the CLI's --model check and the runtime's load hash a file once. Any
# write to a file moves its ctime to "now" (no call sets it back), so a file whose ctime was already
# RACY_SECONDS old when it was hashed cannot change without changing its key; one changed more recently
# is "racily clean" (as git calls it) and is hashed every time.
_VERIFIED: dict[tuple[str, int, int, int, int, int], str] = {}
RACY_SECONDS = 2.0


@dataclass
class Pack:
    """An opened pack: `root` is the folder (for an archive, where it was extracted), `source` what the
    user named."""

    root: Path
    manifest: Manifest
    source: Path

    @property
    def where(self) -> str:
        return f"pack {printable(self.source)}"

    def file(self, name: str) -> Path:
        """The path of a listed file, after checking it is a regular file inside the pack: no component
        of it may be a symbolic link (a link could lead anywhere on the device)."""
        if name not in self.manifest.files:
            raise EdgefaceError(f"{self.where}: '{printable(name)}' is not in its manifest")
        path = self.root
        parts = name.split("/")
        for i, part in enumerate(parts):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                raise EdgefaceError(
                    f"{self.where}: {printable(name)} is missing; copy the whole pack folder"
                ) from None
            except OSError as e:
                raise EdgefaceError(f"{self.where}: cannot read {printable(name)} ({e.strerror})") from None
            if stat.S_ISLNK(mode):
                raise EdgefaceError(
                    f"{self.where}: {printable(name)} is a symbolic link; files in a pack must be regular "
                    "files inside it"
                )
            last = i == len(parts) - 1
            if (last and not stat.S_ISREG(mode)) or (not last and not stat.S_ISDIR(mode)):
                raise EdgefaceError(f"{self.where}: {printable(name)} is not a regular file")
        return path

    def verify(self, names: Iterable[str] | None = None) -> None:
        """Size and SHA-256 of `names` (default: every listed file) against the manifest."""
        for name in self.manifest.files if names is None else names:
            want = self.manifest.files[name]
            path = self.file(name)
            st = os.stat(path)
            if st.st_size != want.size:
                raise EdgefaceError(
                    f"{self.where}: {printable(name)} is {st.st_size} bytes but the manifest says "
                    f"{want.size}: the file is truncated or was changed after packing; copy the pack again"
                )
            key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if _VERIFIED.get(key) == want.sha256:
                continue
            started = time.time()
            digest, size = sha256_file(path, self.where)
            if digest != want.sha256 or size != want.size:
                raise EdgefaceError(
                    f"{self.where}: {printable(name)} does not match its SHA-256 in the manifest (the file "
                    "was changed or damaged after packing); copy the pack again"
                )
            if started - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_SECONDS:
                _VERIFIED[key] = digest

    def choose(self, artifact: str | None) -> ArtifactEntry:
        m = self.manifest
        if artifact is None:
            return m.artifact(m.default_artifact)  # type: ignore[return-value]
        found = m.artifact(artifact) or m.artifact(Path(artifact).name)
        if found is None:
            names = ", ".join(a.file for a in m.artifacts)
            raise EdgefaceError(f"{self.where} has no artifact '{printable(artifact)}' (it holds: {names})")
        return found

    @property
    def detector_path(self) -> Path:
        return self.file(self.manifest.detector)

    @property
    def landmarker_path(self) -> Path | None:
        return self.file(self.manifest.landmarker) if self.manifest.landmarker else None

    def verify_for(self, artifact: ArtifactEntry) -> None:
        """What running `artifact` reads: the artifact, its spec, the detector and the landmark model."""
        mesh = [self.manifest.landmarker] if self.manifest.landmarker else []
        self.verify([artifact.file, artifact.spec, self.manifest.detector, *mesh])

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "pack": printable(self.source),
            "edgeface_version": m.edgeface_version,
            "created": m.created,
            "default_artifact": m.default_artifact,
            "artifacts": [a.__dict__ for a in m.artifacts],
            "detector": m.detector,
            "landmarker": m.landmarker,
            "licenses": [{**lic.__dict__, "covers": list(lic.covers)} for lic in m.licenses],
            "files": len(m.files),
            "bytes": sum(f.size for f in m.files.values()),
        }


def read_manifest(folder: Path, source: Path | None = None) -> Manifest:
    where = f"pack {printable(source or folder)}"
    path = folder / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise EdgefaceError(
            f"{printable(source or folder)} is a folder but not an edgeface pack (no {MANIFEST})"
        ) from None
    except OSError as e:
        raise EdgefaceError(f"{where}: cannot read {MANIFEST} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise EdgefaceError(f"{where}: {MANIFEST} is not a regular file (a symbolic link is refused)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise EdgefaceError(f"{where}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 10} KB")
    try:
        raw = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
        text = raw.decode("utf-8")
    except OSError as e:
        raise EdgefaceError(f"{where}: cannot read {MANIFEST} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise EdgefaceError(f"{where}: {MANIFEST} is not UTF-8 text") from None
    return Manifest.from_json(text, f"{where}: {MANIFEST}")


def open_pack(path: str | os.PathLike[str]) -> Pack:
    """A pack folder, or an archive of one (extracted safely into a private temporary folder that is
    removed when the process exits; see pack_archive)."""
    source = Path(path)
    if is_archive(source) and not source.is_dir():
        from edgeface.runtime.pack_archive import extract

        return Pack(*_folder_and_manifest(extract(source), source), source)
    return Pack(*_folder_and_manifest(source, source), source)


def _folder_and_manifest(folder: Path, source: Path) -> tuple[Path, Manifest]:
    if not folder.is_dir():
        raise EdgefaceError(f"pack not found: {printable(source)}")
    root = Path(os.path.realpath(folder))
    return root, read_manifest(root, source)


def find_pack(artifact: Path) -> tuple[Pack, ArtifactEntry] | None:
    """The pack `artifact` belongs to, if its folder holds a manifest that lists it: loading a pack's
    artifact by its own path checks it and uses the pack's detector just as `--model PACK` does."""
    folder = artifact.parent
    if not os.path.lexists(folder / MANIFEST):
        return None
    pack = Pack(*_folder_and_manifest(folder, folder), folder)
    entry = pack.manifest.artifact(artifact.name)
    return (pack, entry) if entry is not None else None


@dataclass(frozen=True)
class Resolved:
    path: Path  # the artifact file to load
    pack: Pack | None
    note: str | None = None  # which artifact of several was taken, for the user


def resolve(model: str | os.PathLike[str], artifact: str | None = None, verify: bool = True) -> Resolved:
    """What `--model` names -> the artifact file to load, checked against its pack's manifest if it has one.

    A pack folder or archive gives its default artifact (or `artifact`, by file name); an artifact file
    inside a pack folder is checked the same way; any other artifact file is returned as it is. `verify`
    False only chooses (the CLI resolves --model so, and `load_artifact` then checks what it loads).
    """
    path = Path(model)
    if path.is_dir() or is_archive(path):
        if not path.exists():
            raise EdgefaceError(f"pack not found: {printable(path)}")
        pack = open_pack(path)
        entry = pack.choose(artifact)
        if verify:
            pack.verify_for(entry)
        note = None
        if artifact is None and len(pack.manifest.artifacts) > 1:
            others = ", ".join(a.file for a in pack.manifest.artifacts if a is not entry)
            note = (
                f"{pack.where}: using {entry.file} (its default; also holds {others}; --artifact NAME "
                "chooses)"
            )
        return Resolved(pack.root / entry.file, pack, note)
    if artifact is not None:
        raise EdgefaceError(
            f"--artifact (or $EDGEFACE_ARTIFACT) chooses among a pack's artifacts; {printable(path)} is not "
            "a pack"
        )
    if not path.is_file():
        return Resolved(path, None)  # load_artifact says "artifact not found"
    found = find_pack(path)
    if found is None:
        return Resolved(path, None)
    pack, entry = found
    if verify:
        pack.verify_for(entry)
    return Resolved(pack.root / entry.file, pack)


def rank(entries: Sequence[ArtifactEntry]) -> ArtifactEntry:
    """The writer's default artifact: the int8 ONNX if there is one (see PRECISION_RANK, FORMAT_RANK)."""

    def key(a: ArtifactEntry) -> tuple[int, int]:
        return (PRECISION_RANK.index(a.precision), FORMAT_RANK.index(a.format))

    return min(entries, key=key)
