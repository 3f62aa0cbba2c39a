"""Face selection (`--face`) and degenerate detections, through the Python API and the CLI, on multi-face
photos composed here with OpenCV from ../shared raw photos (benchmarks/face_selection.compose).

The artifact is the session's reference artifact (tests/test_runtime_support.reference_artifact: the
shared MobileFaceNet ONNX with a threshold calibrated on compression-split pairs), built once and shared
with the other runtime tests.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.detect import Face, YuNetDetector, degenerate, usable
from edgeface.runtime.pipeline import Pipeline
from edgeface.runtime.select import POLICIES, auto_scores, rank, visible_fraction

from benchmarks.face_selection import compose, reference_landmarks
from edgeface.cli.main import main
from edgeface.cli.runtime_cmd import FACE_POLICIES
from edgeface.errors import EdgefaceError
from tests.test_runtime_support import RAW, raw, reference_artifact

MARKS = reference_landmarks()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def scene(kind: str, subject: tuple[str, int], other: tuple[str, int], variant: int, dest: Path) -> Path:
    """Compose a scene (see benchmarks/face_selection.compose) and write it as PNG."""
    paths = [raw(*subject), raw(*other)]
    rel = [f"{p.parent.name}/{p.name}" for p in paths]
    img, _ = compose(
        kind, cv2.imread(str(paths[0])), MARKS[rel[0]], cv2.imread(str(paths[1])), MARKS[rel[1]], variant
    )
    cv2.imwrite(str(dest), img)
    return dest


@pytest.fixture(scope="module")
def model() -> str:
    return str(reference_artifact())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scenes")
    return {
        # Jimmy Carter centred; Anna Kournikova's face 1.25x larger, 30 % out of the right border
        "border": scene("border", ("Jimmy_Carter", 2), ("Anna_Kournikova", 1), 1, d / "border.png"),
        # Jimmy Carter left (Jimmy_Carter_0002), Anna Kournikova right, faces of about the same size
        "equal": scene("side-by-side", ("Jimmy_Carter", 2), ("Anna_Kournikova", 1), 0, d / "equal.png"),
        # Jimmy Carter's face 170 px at 25 % of a 640x480 frame; a 0.5x face near the centre
        "camera": scene("camera", ("Jimmy_Carter", 2), ("Anna_Kournikova", 1), 4, d / "camera.png"),
    }


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector()


def _faces(detector: YuNetDetector, path: Path) -> tuple[list[Face], int, int]:
    image = cv2.imread(str(path))
    return detector.detect(image), image.shape[1], image.shape[0]


def test_cli_policies_are_the_runtime_policies() -> None:
    assert FACE_POLICIES == POLICIES


def test_border_scene_auto_and_center_take_the_subject_largest_takes_the_cut_face(
    scenes, detector, model
) -> None:
    faces, w, h = _faces(detector, scenes["border"])
    assert len(faces) >= 2
    largest = rank(faces, "largest", w, h)[0]
    assert largest.box[0] + largest.box[2] > w - 2  # the largest face is the one cut by the right border
    assert visible_fraction(largest, w, h) < 0.85
    subject = rank(faces, "center", w, h)[0]
    assert subject is not largest and rank(faces, "auto", w, h)[0] is subject
    scores = auto_scores(faces, w, h)
    assert scores[faces.index(subject)] > 2 * scores[faces.index(largest)]
    # and it decides the verdict: the reference photo matches the scene under auto, not under largest
    artifact = load_artifact(model)
    ref = raw("Jimmy_Carter", 4)
    d, a, b = Pipeline(artifact, detector=detector, face="auto", warn=lambda _m: None).verify(
        scenes["border"], ref
    )
    assert d.match and a.face.box == subject.box
    d, a, _ = Pipeline(artifact, detector=detector, face="largest", warn=lambda _m: None).verify(
        scenes["border"], ref
    )
    assert not d.match and a.face.box == largest.box
    # `all` embeds both, and says which one is cut by the border (its aligned crop is partly black)
    found = Pipeline(artifact, detector=detector, face="all", warn=lambda _m: None).embed_faces(
        scenes["border"]
    )
    visible = {e.face.box: e.visible for e in found}
    assert visible[subject.box] == 1.0 and visible[largest.box] < 0.85


def test_camera_frame_auto_takes_the_dominant_face_center_does_not(scenes, detector) -> None:
    faces, w, h = _faces(detector, scenes["camera"])
    assert len(faces) == 2
    dominant = rank(faces, "largest", w, h)[0]
    assert rank(faces, "auto", w, h)[0] is dominant
    assert rank(faces, "center", w, h)[0] is not dominant
    assert dominant.box[0] + dominant.box[2] / 2 < w / 2  # the subject was placed left of centre


def test_equal_faces_all_policy_gives_one_result_per_face(scenes, detector, model) -> None:
    """Two faces of about equal size at equal distance from the centre: no single-face rule can know the
    subject, `all` verifies both; with a one-face reference, one result per face of the scene."""
    faces, w, h = _faces(detector, scenes["equal"])
    assert len(faces) == 2
    areas = sorted(f.area for f in faces)
    assert areas[0] > 0.6 * areas[1]
    pipe = Pipeline(load_artifact(model), detector=detector, face="all", warn=lambda _m: None)
    embedded = pipe.embed_faces(scenes["equal"])
    assert len(embedded) == 2 and all(e.faces_found == 2 for e in embedded)
    with pytest.raises(EdgefaceError, match="--face all gives one result per face"):
        pipe.embed_image(scenes["equal"])
    pairs = pipe.verify_faces(raw("Jimmy_Carter", 4), scenes["equal"])
    assert len(pairs) == 2 and pairs[0][0].score >= pairs[1][0].score
    matched = [b for d, _, b in pairs if d.match]
    assert len(matched) == 1 and matched[0].face.box[0] < w / 2  # Jimmy Carter is the left photo


def test_one_face_every_policy_agrees_without_warning(detector, model) -> None:
    photo = raw("Anna_Kournikova", 2)
    faces, w, h = _faces(detector, photo)
    assert len(faces) == 1
    artifact = load_artifact(model)
    boxes = set()
    for policy in POLICIES:
        warnings: list[str] = []
        found = Pipeline(artifact, detector=detector, face=policy, warn=warnings.append).embed_faces(photo)
        assert len(found) == 1 and found[0].faces_found == 1 and not warnings
        boxes.add(found[0].face.box)
    assert len(boxes) == 1


def test_unknown_policy_is_refused(model) -> None:
    with pytest.raises(EdgefaceError, match="unknown face policy 'biggest'"):
        Pipeline(load_artifact(model), face="biggest")


def test_raw_sample_auto_takes_the_subject_wherever_largest_does(detector) -> None:
    """The 13 raw_sample photos with several faces: auto takes the subject (reference landmarks) in all
    of them, including Pamela_Anderson_0005, where the largest face is a man cut by the border."""
    wrong_largest, wrong_auto = [], []
    for p in sorted(RAW.rglob("*.jpg")):
        faces, w, h = _faces(detector, p)
        if len(faces) < 2:
            continue
        truth = MARKS[f"{p.parent.name}/{p.name}"]
        iod = np.linalg.norm(truth[0] - truth[1])
        for policy, wrong in (("largest", wrong_largest), ("auto", wrong_auto)):
            chosen = rank(faces, policy, w, h)[0]
            if np.linalg.norm(chosen.landmarks - truth, axis=1).mean() > 0.5 * iod:
                wrong.append(p.stem)
    assert wrong_largest == ["Pamela_Anderson_0005"] and wrong_auto == []


# --- CLI --------------------------------------------------------------------------------------------------
def test_cli_warning_names_policy_and_box_and_strict_still_fails(capsys, model, scenes) -> None:
    code, out, err = run(
        capsys, "verify", str(scenes["border"]), str(raw("Jimmy_Carter", 4)), "--model", model, "--json"
    )
    assert code == 0, err
    r = json.loads(out)
    n = r["faces"][0]["faces_found"]
    warned = re.search(
        rf"warning: {n} faces found in {re.escape(str(scenes['border']))}; using the face at box "
        r"\[([-\d, ]+)\] \(x, y, w, h\), chosen by --face auto",
        err,
    )
    assert warned, err
    assert np.allclose([float(v) for v in warned.group(1).split(",")], r["faces"][0]["box"], atol=0.51)
    assert r["match"] is True and r["face_policy"] == "auto" and len(r["results"]) == 1
    assert r["faces"][0]["visible"] == 1.0
    code, _, err = run(
        capsys,
        "verify",
        str(scenes["border"]),
        str(raw("Jimmy_Carter", 4)),
        "--model",
        model,
        "--face",
        "largest",
        "--strict-single-face",
    )
    assert code == 2 and f"{n} faces found" in err and "--strict-single-face accepts exactly one" in err


def test_cli_verify_and_identify_all_one_result_per_face(capsys, model, scenes, tmp_path) -> None:
    code, out, err = run(
        capsys,
        "verify",
        str(raw("Jimmy_Carter", 4)),
        str(scenes["equal"]),
        "--model",
        model,
        "--face",
        "all",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["face_policy"] == "all" and len(r["results"]) == 2
    assert [x["match"] for x in r["results"]] == [True, False]  # best score first
    assert r["match"] is True and r["faces"] == r["results"][0]["faces"]
    assert r["results"][0]["faces"][1]["box"][0] < 250 <= r["results"][1]["faces"][1]["box"][0]
    # identify: one result per face of the scene, each with its own candidates
    gal = str(tmp_path / "g.sqlite")
    for name, photos in (("Jimmy Carter", [raw("Jimmy_Carter", 1)]), ("Anna", [raw("Anna_Kournikova", 2)])):
        code, _, err = run(
            capsys, "enroll", "--name", name, *map(str, photos), "--model", model, "--gallery", gal
        )
        assert code == 0, err
    code, out, err = run(
        capsys,
        "identify",
        str(scenes["equal"]),
        "--model",
        model,
        "--gallery",
        gal,
        "--face",
        "all",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    by_side = {("left" if x["face"]["box"][0] < 250 else "right"): x["identity"] for x in r["results"]}
    assert by_side == {"left": "Jimmy Carter", "right": "Anna"}
    assert all(x["face"]["faces_found"] == 2 and x["candidates"] for x in r["results"])
    # the text form lists every face too
    code, out, _ = run(
        capsys, "identify", str(scenes["equal"]), "--model", model, "--gallery", gal, "--face", "all"
    )
    assert code == 0 and out.count("(face at box [") == 2
    # enroll refuses `all` (one template per photo) before touching the gallery
    before = (tmp_path / "g.sqlite").read_bytes()
    code, _, err = run(
        capsys,
        "enroll",
        "--name",
        "X",
        str(scenes["equal"]),
        "--model",
        model,
        "--gallery",
        gal,
        "--face",
        "all",
    )
    assert code == 2 and "--face all is for verify and identify" in err
    assert (tmp_path / "g.sqlite").read_bytes() == before


# --- degenerate detections ----------------------------------------------------------------------------------
GOOD_LM = np.array([[40.0, 50], [70, 50], [55, 65], [45, 80], [65, 80]])


@pytest.mark.parametrize(
    ("box", "landmarks", "score", "reason"),
    [
        ((30.0, 30, 50, 60), GOOD_LM, 0.9, None),
        ((math.nan, 30, 50, 60), GOOD_LM, 0.9, "non-finite"),
        ((30.0, 30, 50, 60), np.where(GOOD_LM == 70, np.inf, GOOD_LM), 0.9, "non-finite"),
        ((30.0, 30, 50, 60), GOOD_LM, math.nan, "non-finite"),
        # recorded from YuNet 2026may on OpenCV 4.14 for a 1x1 image right after a 250x250 photo
        ((-math.inf, -1.379e20, math.inf, 0.0), GOOD_LM, 1.0, "non-finite"),
        ((30.0, 30, 0, 60), GOOD_LM, 0.9, "zero-area"),
        ((-1.0e27, 1.4e27, 0.0, 0.0), GOOD_LM, 1.0, "zero-area"),
        ((130.0, 30, 50, 60), GOOD_LM + 100, 0.9, "box outside the frame"),
        ((30.0, 30, 50, 60), GOOD_LM - 60, 0.9, "landmarks outside the frame"),
        ((30.0, 30, 50, 60), np.full((5, 2), 55.0), 0.9, "collapsed"),
    ],
)
def test_degenerate_detections_are_named(box, landmarks, score, reason) -> None:
    why = degenerate(Face(box, np.asarray(landmarks, np.float64), score), 120, 100)
    assert why is None if reason is None else reason in why


class RecordedYuNet(YuNetDetector):
    """The real detector's filtering and pipeline, fed rows OpenCV's YuNet (cv2.FaceDetectorYN) really
    returned on tiny images (recorded above): it returned them only some of the time (uninitialised
    memory), so a test that waited for them would be flaky."""

    ROWS = np.array(
        [
            [-np.inf, -1.379e20, np.inf, 0.0, *GOOD_LM.ravel(), 1.0],
            [-5.4e19, -2.19e19, 0.0, 0.0, *GOOD_LM.ravel(), 1.0],
            [2.72e24, -np.inf, 0.0, np.inf, *GOOD_LM.ravel(), 1.0],
        ],
        np.float32,
    )

    def _run(self, image_bgr: np.ndarray) -> np.ndarray:
        return self.ROWS


def test_only_degenerate_detections_is_no_usable_face(capsys, model, tmp_path) -> None:
    pipe = Pipeline(load_artifact(model), detector=RecordedYuNet())
    with pytest.raises(EdgefaceError, match=r"no usable face in .*3 detection\(s\) were degenerate"):
        pipe.embed_faces(raw("Bob_Hope", 1))


def test_tiny_images_never_yield_a_face_with_non_finite_numbers(capsys, model, detector, tmp_path) -> None:
    """Tiny and extremely thin inputs (OpenCV's YuNet returned rows of uninitialised memory on inputs of
    32 px or less, kept in RecordedYuNet above): every raw row the detector returns for them is finite, no
    face with a non-finite number survives `usable`, and through the CLI a tiny image is a clear error,
    never JSON."""
    photo = cv2.imread(str(raw("Bob_Hope", 1)))
    shapes = [(1, 1), (23, 28), (28, 23), (4, 1), (2, 700), (16, 640), (1, 300)]
    for h, w in shapes:
        tiny = cv2.resize(photo, (w, h))
        rows = detector._run(tiny).astype(np.float64)
        assert np.isfinite(rows).all(), (h, w)
        faces = [Face(tuple(r[:4]), r[4:14].reshape(5, 2), float(r[14])) for r in rows]
        for f in usable(faces, w, h)[0]:
            assert np.isfinite(f.box).all() and np.isfinite(f.landmarks).all()
        assert all(np.isfinite(f.box).all() for f in detector.detect(tiny))
    for h, w in ((1, 1), (23, 28), (2, 700)):
        path = tmp_path / f"tiny_{h}x{w}.png"
        cv2.imwrite(str(path), cv2.resize(photo, (w, h)))
        code, out, err = run(capsys, "verify", str(path), str(raw("Bob_Hope", 2)), "--model", model, "--json")
        assert code == 2 and out == "" and err.startswith("error: no ") and "Traceback" not in err
        assert "NaN" not in err and "Infinity" not in err
