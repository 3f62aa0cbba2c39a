"""The face-quality gate (edgeface.runtime.quality) on real LFW faces, and its use by enroll and verify."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from edgeface.runtime.align import ARCFACE_TEMPLATE
from edgeface.runtime.detect import Face, YuNetDetector
from edgeface.runtime.gallery import Gallery
from edgeface.runtime.quality import QualityThresholds, assess, face_problem, pose, usable_faces

from edgeface.cli.main import main
from edgeface.cli.quality_options import THRESHOLDS
from edgeface.errors import EdgefaceError
from tests.test_runtime_support import raw, reference_artifact

# one photo per identity, the subject's face the largest in each
PHOTOS = [
    ("Anna_Kournikova", 1),
    ("Antonio_Palocci", 2),
    ("Benjamin_Netanyahu", 3),
    ("Bob_Hope", 2),
    ("Claudia_Pechstein", 3),
    ("Jimmy_Carter", 4),
    ("Jose_Manuel_Durao_Barroso", 2),
    ("Kevin_Costner", 4),
    ("Naji_Sabri", 1),
    ("Pamela_Anderson", 1),
    ("Ricardo_Lagos", 2),
    ("Spencer_Abraham", 3),
]


@pytest.fixture(scope="module")
def model() -> str:
    return str(reference_artifact())


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector()


def _face(detector: YuNetDetector, image: np.ndarray) -> Face:
    faces = detector.detect(image)
    assert faces
    return detector.refine(image, faces[0])


def blurred(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 3.0)


def tiny(image: np.ndarray) -> np.ndarray:
    """The photo shrunk to 60 px on a grey 250 px canvas: a ~30 px face."""
    canvas = np.full_like(image, 128)
    canvas[95:155, 95:155] = cv2.resize(image, (60, 60), interpolation=cv2.INTER_AREA)
    return canvas


def test_cli_defaults_are_the_runtime_defaults() -> None:
    d = QualityThresholds()
    assert {name: default for name, default, _, _ in THRESHOLDS} == {
        f: getattr(d, f) for f in d.__dataclass_fields__
    }


def test_real_faces_pass_blurred_tiny_and_dark_ones_fail(detector) -> None:
    passed, blur_refused, scores = 0, 0, []
    for name, i in PHOTOS:
        img = cv2.imread(str(raw(name, i)))
        q = assess(img, _face(detector, img))
        passed += q.passed
        b = blurred(img)
        qb = assess(b, _face(detector, b))
        blur_refused += any("too blurred" in f for f in qb.failures)
        scores.append((q.score, qb.score))
        assert 0 < qb.score < q.score <= 1 and qb.sharpness < q.sharpness / 3
    assert passed == len(PHOTOS)
    assert blur_refused == len(PHOTOS)
    img = cv2.imread(str(raw("Jimmy_Carter", 4)))
    small = tiny(img)
    q = assess(small, _face(detector, small))
    assert not q.passed and any("too small" in f for f in q.failures), q
    dark = (img * 0.15).astype(np.uint8)
    q = assess(dark, _face(detector, dark))
    assert any("too dark" in f for f in q.failures), q


def test_pose_from_landmarks() -> None:
    yaw, roll = pose(ARCFACE_TEMPLATE)
    assert abs(yaw) < 0.02 and abs(roll) < 0.5
    a = math.radians(20)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    yaw, roll = pose(ARCFACE_TEMPLATE @ rot.T)
    assert abs(roll - 20) < 0.5 and abs(yaw) < 0.02  # roll does not leak into yaw
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 0.4 * (turned[1, 0] - turned[0, 0])  # nose shifted by 0.4 eye distances
    yaw, _ = pose(turned)
    assert 0.38 < yaw < 0.42
    face = Face((0.0, 0.0, 112.0, 112.0), turned, 0.9)
    q = assess(np.full((112, 112, 3), 128, np.uint8), face, QualityThresholds(max_yaw=0.3))
    assert any("turned" in f for f in q.failures)


def test_degenerate_detections_are_refused() -> None:
    lm = ARCFACE_TEMPLATE + 50
    shape = (240, 320, 3)
    cases = {
        "non-finite": Face((np.nan, 40.0, 100.0, 100.0), lm, 0.9),
        "infinite": Face((40.0, 40.0, np.inf, 100.0), lm, 0.9),
        "zero-area": Face((40.0, 40.0, 0.0, 100.0), lm, 0.9),
        "negative": Face((40.0, 40.0, -5.0, 100.0), lm, 0.9),
        "outside the frame": Face((300.0, 200.0, 100.0, 100.0), lm, 0.9),
        "landmarks outside": Face((40.0, 40.0, 100.0, 100.0), lm + 400, 0.9),
        "nan score": Face((40.0, 40.0, 100.0, 100.0), lm, float("nan")),
    }
    for why, face in cases.items():
        assert face_problem(face, shape) is not None, why
        q = assess(np.zeros(shape, np.uint8), face)
        assert not q.passed and q.score == 0 and "degenerate" in q.failures[0], why
    good = Face((40.0, 40.0, 100.0, 100.0), lm, 0.9)
    assert face_problem(good, shape) is None
    assert usable_faces([*cases.values(), good], shape) == [good]


def test_thresholds_are_validated() -> None:
    for bad in ({"min_sharpness": float("nan")}, {"max_yaw": float("inf")}, {"min_face_size": -1.0}):
        with pytest.raises(EdgefaceError):
            QualityThresholds(**bad)
    with pytest.raises(EdgefaceError, match="min_brightness"):
        QualityThresholds(min_brightness=200, max_brightness=100)
    with pytest.raises(EdgefaceError):
        QualityThresholds(min_detector_score=1.5)


# --- enroll and verify ------------------------------------------------------------------------------------
def test_enroll_refuses_blurred_and_tiny_faces(model, tmp_path, capsys) -> None:
    img = cv2.imread(str(raw("Jimmy_Carter", 4)))
    cv2.imwrite(str(tmp_path / "blurred.jpg"), blurred(img))
    cv2.imwrite(str(tmp_path / "tiny.jpg"), tiny(img))
    gallery = tmp_path / "g.sqlite"
    base = ["--model", model, "--gallery", str(gallery)]
    good = str(raw("Jimmy_Carter", 2))
    for bad, why in (("blurred.jpg", "too blurred"), ("tiny.jpg", "face too small")):
        code = main(["enroll", "--name", "Jimmy", good, str(tmp_path / bad), *base])
        _, err = capsys.readouterr()
        assert code == 2, err
        lines = err.strip().splitlines()
        errors = [x for x in lines if not x.startswith("warning: ")]  # warnings: other faces in a photo
        assert len(errors) == 1, err
        line = errors[0]
        assert line.startswith("error: poor face quality, not enrolled: ") and why in line, line
        assert bad in line and "--allow-poor-quality" in line and "Traceback" not in err
        with Gallery(gallery, create=False) as g:
            assert g.identities() == []  # the good photo beside it was not enrolled either
    code = main(["enroll", "--name", "Jimmy", str(tmp_path / "blurred.jpg"), *base, "--allow-poor-quality"])
    assert code == 0, capsys.readouterr().err
    # thresholds come from the command line: a stricter one refuses the sharp photo too
    code = main(["enroll", "--name", "Jimmy", good, *base, "--min-sharpness", "5000"])
    _, err = capsys.readouterr()
    assert code == 2 and "too blurred" in err
    code = main(["enroll", "--name", "Jimmy", good, *base, "--max-yaw", "nan"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: Invalid value for '--max-yaw'") and len(err.splitlines()) == 1


def test_verify_checks_quality_only_when_asked(model, tmp_path, capsys) -> None:
    cv2.imwrite(str(tmp_path / "blurred.jpg"), blurred(cv2.imread(str(raw("Jimmy_Carter", 4)))))
    args = ["verify", str(tmp_path / "blurred.jpg"), str(raw("Jimmy_Carter", 2)), "--model", model]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--check-quality"]) == 2
    _, err = capsys.readouterr()
    assert "poor face quality, not compared" in err and "too blurred" in err
