"""A pack can carry a face-mesh landmark model (`edgeface pack --landmarker`): listed, hashed and licensed
like the detector, used by every verb that runs the pack, carried when re-packed, and refused with one
error line when it is changed, unlicensed or not a landmark model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.pack import MANIFEST, open_pack
from edgeface.runtime.pipeline import Pipeline

from edgeface.cli.main import main
from tests.landmark_support import fake_mesh_model
from tests.test_pack import LICENSE, YUNET, one_error, run
from tests.test_runtime_support import raw, reference_artifact


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mesh")
    lic = d / "LICENSE.mediapipe"
    lic.write_text("Apache License, Version 2.0 (test stand-in for the licence text)\n")
    return {"model": fake_mesh_model(d / "face_landmark.tflite", 8.0), "license": lic}


@pytest.fixture(scope="module")
def packed(tmp_path_factory, mesh) -> Path:
    out = tmp_path_factory.mktemp("packs") / "p"
    code = main(
        [
            *("pack", str(reference_artifact()), "-o", str(out), "--detector", str(YUNET)),
            *("--license", str(LICENSE), "--landmarker", str(mesh["model"])),
            *("--landmarker-license", str(mesh["license"])),
        ]
    )
    assert code == 0
    return out


def test_the_pack_lists_hashes_and_licenses_the_landmark_model(packed, capsys) -> None:
    m = json.loads((packed / MANIFEST).read_text())
    assert m["landmarker"] == {"file": "face_landmark.tflite", "kind": "face-mesh"}
    assert "face_landmark.tflite" in m["files"]
    assert any(lic["covers"] == ["face_landmark.tflite"] for lic in m["licenses"])
    code, out, _ = run(capsys, "pack", "--check", packed)
    assert code == 0 and "landmark model face_landmark.tflite" in out


def test_a_pack_with_a_landmark_model_refines_with_it(packed, capsys) -> None:
    art = load_artifact(packed)
    assert art.landmarker_path == packed / "face_landmark.tflite"
    pipe = Pipeline(art)
    assert pipe.detector is not None and pipe.detector.landmarker is not None
    assert Pipeline(art, refine_landmarks=False).detector.landmarker is None  # type: ignore[union-attr]
    photo = raw("Bob_Hope", 1)
    code, out, err = run(capsys, "verify", photo, photo, "--model", packed, "--json")
    assert code == 0, err
    assert json.loads(out)["score"] > 0.99


def test_re_packing_carries_the_landmark_model_and_its_licence(packed, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "pack", packed, "-o", tmp_path / "again")
    assert code == 0, err
    m = open_pack(tmp_path / "again").manifest
    assert m.landmarker == "face_landmark.tflite"
    assert any("face_landmark.tflite" in lic.covers for lic in m.licenses)


def test_a_changed_landmark_model_is_one_error_line(packed, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    f = copy / "face_landmark.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    photo = raw("Bob_Hope", 1)
    code, _, err = run(capsys, "verify", photo, photo, "--model", copy)
    assert code == 2 and "face_landmark.tflite does not match its SHA-256" in one_error(err)


def test_the_writer_refuses_an_unlicensed_or_wrong_landmark_model(mesh, tmp_path, capsys) -> None:
    art = reference_artifact()
    base = ("pack", art, "--detector", YUNET, "--license", LICENSE)
    code, _, err = run(capsys, *base, "-o", tmp_path / "a", "--landmarker", mesh["model"])
    assert code == 2 and "--landmarker-license FILE" in one_error(err)
    code, _, err = run(capsys, *base, "-o", tmp_path / "b", "--landmarker", YUNET,
                       "--landmarker-license", mesh["license"])  # fmt: skip
    assert code == 2 and "expected a face-mesh .tflite file" in one_error(err)
    code, _, err = run(capsys, *base, "-o", tmp_path / "c", "--landmarker-license", mesh["license"])
    assert code == 2 and "give both" in one_error(err)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_a_malformed_landmarker_entry_is_one_error_line(packed, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    m = json.loads((copy / MANIFEST).read_text())
    m["landmarker"]["kind"] = "python"
    (copy / MANIFEST).write_text(json.dumps(m))
    code, _, err = run(capsys, "pack", "--check", copy)
    assert code == 2 and "'landmarker' must be" in one_error(err)
