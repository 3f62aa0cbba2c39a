"""The pack format vector shared with the Android port (android_demo/core PackTest.kt reads the same folder):
tests/data/vectors/pack is a pack whose manifest is exactly what edgeface.runtime.pack writes for its
files, and which the Python reader accepts and resolves as the Kotlin side must.

Its artifacts and detector are stubs (short text, never loaded: the format is what is tested; ../shared's
files may not be committed); the specs beside them are the real exported sidecars of tests/data/vectors.
Regenerate after a deliberate format change with `python -m tests.test_pack_vectors`.
"""

from __future__ import annotations

from pathlib import Path

from edgeface.runtime.pack import (
    MANIFEST,
    ArtifactEntry,
    LicenseEntry,
    Manifest,
    open_pack,
    resolve,
    sha256_file,
)
from edgeface.runtime.pack import FileEntry as Entry

VECTORS = Path(__file__).resolve().parent / "data" / "vectors"
FIXTURE = VECTORS / "pack"
STUB = "stub for the pack format vector: hashed, never loaded\n"
TEXT = {
    "mobilefacenet_int8.onnx": "ONNX " + STUB,
    "mobilefacenet_int8.tflite": "TFLite " + STUB,
    "face_detection_yunet_stub.onnx": "YuNet " + STUB,
    "licenses/LICENSE.model": "the model's licence text " + STUB,
    "licenses/LICENSE.yunet": "the detector's licence text " + STUB,
}
SPECS = [f"mobilefacenet_int8.{fmt}.json" for fmt in ("onnx", "tflite")]  # copies of the vectors' sidecars


def expected_manifest() -> str:
    files = {name: Entry(*sha256_file(FIXTURE / name, "vector")) for name in sorted([*TEXT, *SPECS])}
    artifacts = tuple(
        ArtifactEntry(
            f"mobilefacenet_int8.{fmt}", f"mobilefacenet_int8.{fmt}.json", fmt, "mobilefacenet", "w8a8", 128
        )
        for fmt in ("onnx", "tflite")
    )
    return Manifest(
        edgeface_version="0.1.0",
        created="2026-01-01T00:00:00Z",
        default_artifact="mobilefacenet_int8.onnx",
        artifacts=artifacts,
        detector="face_detection_yunet_stub.onnx",
        licenses=(
            LicenseEntry("licenses/LICENSE.model", tuple(a.file for a in artifacts), "given with --license"),
            LicenseEntry("licenses/LICENSE.yunet", ("face_detection_yunet_stub.onnx",), "edgeface's copy"),
        ),
        files=files,
    ).to_json()


def write_fixture() -> None:
    for name, text in TEXT.items():
        (FIXTURE / name).parent.mkdir(parents=True, exist_ok=True)
        (FIXTURE / name).write_text(text)
    for name in SPECS:
        (FIXTURE / name).write_bytes((VECTORS / name).read_bytes())
    (FIXTURE / MANIFEST).write_text(expected_manifest())


def test_the_vector_is_what_the_python_writer_format_gives() -> None:
    assert (FIXTURE / MANIFEST).read_text() == expected_manifest()
    for name in SPECS:
        assert (FIXTURE / name).read_bytes() == (VECTORS / name).read_bytes(), f"{name} is stale"


def test_the_python_reader_accepts_the_vector_and_takes_its_default() -> None:
    pack = open_pack(FIXTURE)
    pack.verify()
    chosen = resolve(FIXTURE)
    assert chosen.path.name == "mobilefacenet_int8.onnx" and "mobilefacenet_int8.tflite" in chosen.note


if __name__ == "__main__":
    write_fixture()
