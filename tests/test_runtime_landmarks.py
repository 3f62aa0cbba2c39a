"""The face-mesh landmarker (runtime.landmarks): crop geometry, mirror averaging, the face logit, and the
file checks, through real TFLite files made here with litert-torch. The real MediaPipe model is not on this
machine's test path (it ships inside the mediapipe wheels); its precision is measured in
benchmarks/face_selection.py --landmarker."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeface.runtime.align import ARCFACE_TEMPLATE, similarity_transform
from edgeface.runtime.detect import MIRROR, Face, YuNetDetector
from edgeface.runtime.landmarks import (
    FACE_FRACTION,
    MeshLandmarker,
)

from edgeface.errors import EdgefaceError
from tests.eval_support import embedded_onnx
from tests.landmark_support import SHIFT, SIDE, fake_mesh_model
from tests.test_bad_input_support import assert_one_error, run
from tests.test_runtime_support import SHARED


@pytest.fixture(scope="module")
def fake_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mesh")
    return {
        "face": fake_mesh_model(d / "face.tflite", 8.0),
        "noface": fake_mesh_model(d / "noface.tflite", -8.0),
        "wrong": fake_mesh_model(d / "wrong.tflite", 8.0, (1, SIDE, SIDE // 2, 3)),
        "elsewhere": fake_mesh_model(d / "elsewhere.tflite", 8.0, shift=np.array([0.0, 40.0])),
    }


def _face(angle: float = 12.0, scale: float = 1.7, at: tuple[float, float] = (150.0, 130.0)) -> Face:
    """A tilted face's landmarks: the template rotated, scaled and moved."""
    c = ARCFACE_TEMPLATE.mean(0)
    r = np.deg2rad(angle)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    lm = (ARCFACE_TEMPLATE - c) @ rot.T * scale + at
    return Face((at[0] - 95, at[1] - 95, 190.0, 190.0), lm, 0.9, 190.0)


def test_landmarks_come_back_to_the_photo_mirror_averaged(fake_models: dict[str, Path]) -> None:
    image = np.full((300, 320, 3), 128, np.uint8)
    face = _face()
    out = MeshLandmarker(fake_models["face"]).refine(image, face)
    # expected from first principles: the crop's similarity, the model's points direct and mirrored
    s = SIDE * FACE_FRACTION / 112.0
    m = similarity_transform(face.landmarks, ARCFACE_TEMPLATE * s + (SIDE - 112.0 * s) / 2)
    five = ARCFACE_TEMPLATE * s + (SIDE - 112.0 * s) / 2 + SHIFT
    mirrored = np.c_[SIDE - 1 - five[:, 0], five[:, 1]][MIRROR]
    inv = cv2.invertAffineTransform(m)
    expected = (five + mirrored) / 2 @ inv[:, :2].T + inv[:, 2]
    np.testing.assert_allclose(out.landmarks, expected, atol=1e-3)
    # the model's left/right error (+2 crop px in x, 2.6 photo px) cancels, its vertical one (+3) survives,
    # rotated back; what is left is the template's own asymmetry and the half pixel of the mirror
    moved = out.landmarks - face.landmarks
    step = inv[:, :2] @ np.array([0.0, SHIFT[1]])
    assert np.abs(moved - step).max() < 1.0 and np.linalg.norm(step) > 3.5
    assert out.box == face.box and out.score == face.score


def test_no_face_in_the_crop_keeps_the_detector_landmarks(fake_models: dict[str, Path]) -> None:
    face = _face()
    out = MeshLandmarker(fake_models["noface"]).refine(np.zeros((300, 320, 3), np.uint8), face)
    assert out is face
    point = Face(face.box, np.tile(face.landmarks[:1], (5, 1)), face.score)  # five coinciding landmarks
    assert MeshLandmarker(fake_models["face"]).refine(np.zeros((300, 320, 3), np.uint8), point) is point


def test_a_result_far_from_the_detection_is_not_taken(fake_models: dict[str, Path]) -> None:
    """A model that puts the face 40 crop pixels (about 0.9 inter-ocular distances) below the detection
    found something else: the detector's landmarks stay."""
    face = _face()
    assert MeshLandmarker(fake_models["elsewhere"]).refine(np.zeros((300, 320, 3), np.uint8), face) is face


def test_the_detector_uses_the_landmarker_and_its_clone_too(fake_models: dict[str, Path]) -> None:
    det = YuNetDetector(landmarker=fake_models["face"])
    face = _face()
    image = np.zeros((300, 320, 3), np.uint8)
    a = det.refine(image, face).landmarks
    b = det.clone().refine(image, face).landmarks
    np.testing.assert_allclose(a, b)
    assert not np.allclose(a, face.landmarks)


def test_files_that_are_not_a_mesh_model_are_refused(fake_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgefaceError, match="not a face-mesh landmark model"):
        MeshLandmarker(fake_models["wrong"])
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(EdgefaceError, match="cannot load landmark model"):
        MeshLandmarker(junk)
    with pytest.raises(EdgefaceError, match="landmark model not found"):
        MeshLandmarker(tmp_path / "missing.tflite")


def test_cli_takes_a_landmarker_and_refuses_bad_ones(
    capsys, tmp_path: Path, fake_models: dict[str, Path]
) -> None:
    photos = [str(p) for p in sorted((SHARED / "data" / "lfw" / "raw_sample").rglob("*.jpg"))[:2]]
    art = str(embedded_onnx(tmp_path))
    ok = run(capsys, "verify", *photos, "--model", art, "--landmarker", str(fake_models["face"]), "--json")
    assert ok.code == 0, ok.err
    assert -1.0 <= json.loads(ok.out)["score"] <= 1.0
    both = run(capsys, "verify", *photos, "--model", art, "--landmarker", str(fake_models["face"]),
               "--no-refine")  # fmt: skip
    assert_one_error(both, "--no-refine keeps YuNet's first landmarks")
    missing = run(capsys, "verify", *photos, "--model", art, "--landmarker", str(tmp_path / "no.tflite"))
    assert_one_error(missing, "landmark model not found")
    wrong = run(capsys, "verify", *photos, "--model", art, "--landmarker", str(fake_models["wrong"]))
    assert_one_error(wrong, "not a face-mesh landmark model")
