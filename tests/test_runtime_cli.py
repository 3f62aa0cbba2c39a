"""`edgeface verify | enroll | identify | gallery | profile` end to end on raw LFW photos, and every bad
input the issue lists: one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeface.cli.main import main
from tests.test_runtime_support import copy_without_spec, int8_io_artifact, raw, reference_artifact


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model() -> str:
    return str(reference_artifact())


def test_verify_json_same_and_different(capsys, model) -> None:
    code, out, err = run(
        capsys, "verify", str(raw("Jimmy_Carter", 1)), str(raw("Jimmy_Carter", 4)), "--model", model, "--json"
    )
    assert code == 0, err
    same = json.loads(out)
    assert same["match"] is True and isinstance(same["score"], float) and same["score"] >= same["threshold"]
    assert set(same["timings_ms"]) == {"decode", "detect", "align", "embed", "match"}
    code, out, _ = run(
        capsys,
        "verify",
        str(raw("Jimmy_Carter", 1)),
        str(raw("Anna_Kournikova", 2)),
        "--model",
        model,
        "--json",
    )
    diff = json.loads(out)
    assert code == 0 and diff["match"] is False and diff["score"] < diff["threshold"]
    # the threshold is overridable, and the text form states the verdict
    code, out, _ = run(
        capsys,
        "verify",
        str(raw("Jimmy_Carter", 1)),
        str(raw("Anna_Kournikova", 2)),
        "--model",
        model,
        "--threshold",
        "-1",
    )
    assert code == 0 and out.startswith("same person")


def test_unreadable_and_corrupt_images(capsys, model, tmp_path) -> None:
    code, _, err = run(
        capsys, "verify", str(tmp_path / "nope.jpg"), str(raw("Bob_Hope", 1)), "--model", model
    )
    assert code == 2 and err.strip() == f"error: image not found: {tmp_path / 'nope.jpg'}"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(raw("Bob_Hope", 1).read_bytes()[:200])  # truncated JPEG
    code, _, err = run(capsys, "verify", str(corrupt), str(raw("Bob_Hope", 1)), "--model", model)
    assert code == 2 and "cannot decode image" in err and "Traceback" not in err


def test_no_face(capsys, model, tmp_path) -> None:
    blank = tmp_path / "wall.png"
    img = cv2.imread(str(raw("Bob_Hope", 1)))
    cv2.imwrite(str(blank), cv2.GaussianBlur(img, (0, 0), 40))  # a real photo's colours, no face left
    code, _, err = run(capsys, "verify", str(blank), str(raw("Bob_Hope", 1)), "--model", model)
    assert code == 2 and err.strip() == f"error: no face found in {blank}"


def test_several_faces_chosen_with_warning_or_strict_failure(capsys, model) -> None:
    crowd = raw("Naji_Sabri", 3)  # six faces; the subject's is the largest and the most central
    code, out, err = run(capsys, "verify", str(crowd), str(raw("Naji_Sabri", 1)), "--model", model, "--json")
    assert code == 0 and f"warning: 6 faces found in {crowd}; using the face at box [" in err
    assert "chosen by --face auto" in err
    r = json.loads(out)  # stdout stays pure JSON
    assert r["faces"][0]["faces_found"] == 6 and r["match"] is True
    code, _, err = run(
        capsys, "verify", str(crowd), str(raw("Naji_Sabri", 1)), "--model", model, "--strict-single-face"
    )
    assert code == 2 and "6 faces found" in err and "--strict-single-face" in err


def test_artifact_without_spec_or_threshold(capsys, tmp_path) -> None:
    bare = copy_without_spec(tmp_path)
    code, _, err = run(
        capsys, "verify", str(raw("Bob_Hope", 1)), str(raw("Bob_Hope", 2)), "--model", str(bare)
    )
    assert code == 2 and "artifact has no spec" in err
    from edgeface.spec import write_spec_json
    from tests.test_runtime_support import reference_spec

    write_spec_json(reference_spec().replace(threshold=None), tmp_path / "no_spec.onnx.json")
    code, _, err = run(
        capsys, "verify", str(raw("Bob_Hope", 1)), str(raw("Bob_Hope", 2)), "--model", str(bare)
    )
    assert code == 2 and "no calibrated threshold; pass --threshold" in err
    code, out, _ = run(
        capsys,
        "verify",
        str(raw("Bob_Hope", 1)),
        str(raw("Bob_Hope", 2)),
        "--model",
        str(bare),
        "--threshold",
        "0.3",
    )
    assert code == 0 and "score" in out


def test_enroll_identify_list_remove(capsys, model, tmp_path) -> None:
    gal = str(tmp_path / "g.sqlite")
    code, out, err = run(
        capsys,
        "enroll",
        "--name",
        "Jimmy Carter",
        str(raw("Jimmy_Carter", 1)),
        str(raw("Jimmy_Carter", 2)),
        "--model",
        model,
        "--gallery",
        gal,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["added"] == 2
    code, _, err = run(
        capsys, "enroll", "--name", "Anna", str(raw("Anna_Kournikova", 1)), "--model", model, "--gallery", gal
    )
    assert code == 0, err
    code, out, err = run(
        capsys,
        "identify",
        str(raw("Jimmy_Carter", 4)),
        "--model",
        model,
        "--gallery",
        gal,
        "--json",
        "--top-k",
        "2",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["identity"] == "Jimmy Carter" and [c["name"] for c in r["candidates"]] == [
        "Jimmy Carter",
        "Anna",
    ]
    assert r["gallery_templates"] == 3
    code, out, _ = run(capsys, "identify", str(raw("Ricardo_Lagos", 1)), "--model", model, "--gallery", gal)
    assert code == 0 and out.startswith("unknown")
    # a bad image among several: nothing of that enroll is written
    code, _, err = run(
        capsys,
        "enroll",
        "--name",
        "Anna",
        str(raw("Anna_Kournikova", 2)),
        str(tmp_path / "missing.jpg"),
        "--model",
        model,
        "--gallery",
        gal,
    )
    assert code == 2 and "image not found" in err
    code, out, _ = run(capsys, "gallery", "list", "--gallery", gal, "--json")
    listed = json.loads(out)
    assert {i["name"]: i["templates"] for i in listed["identities"]} == {"Jimmy Carter": 2, "Anna": 1}
    assert listed["model"]["embedding_dim"] == 128
    code, out, _ = run(capsys, "gallery", "remove", "Anna", "--gallery", gal)
    assert code == 0 and "removed 'Anna'" in out
    code, _, err = run(capsys, "gallery", "remove", "Anna", "--gallery", gal)
    assert code == 2 and "no identity named 'Anna'" in err
    # a gallery made by another model is refused, for enroll and identify alike
    other = str(int8_io_artifact())
    for verb in (
        ["identify", str(raw("Jimmy_Carter", 4))],
        ["enroll", "--name", "X", str(raw("Bob_Hope", 1))],
    ):
        code, _, err = run(capsys, *verb, "--model", other, "--gallery", gal)
        assert code == 2 and "was made by model" in err, err


def test_corrupt_gallery_via_cli(capsys, model, tmp_path) -> None:
    junk = tmp_path / "g.sqlite"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, err = run(capsys, "gallery", "list", "--gallery", str(junk))
    assert code == 2 and "corrupt or not a database" in err
    code, _, err = run(capsys, "identify", str(raw("Bob_Hope", 1)), "--model", model, "--gallery", str(junk))
    assert code == 2 and "corrupt or not a database" in err
    code, _, err = run(capsys, "gallery", "list", "--gallery", str(tmp_path / "none.sqlite"))
    assert code == 2 and "gallery not found" in err


def test_profile_json_has_benchmark_keys(capsys, model, tmp_path) -> None:
    code, out, err = run(capsys, "profile", model, "--runs", "5", "--warmup", "2", "--threads", "1", "--json")
    assert code == 0, err
    r = json.loads(out)
    for key in (
        "init_ms",
        "first_inference_ms",
        "warmup_runs",
        "threads",
        "peak_rss_mb",
        "inference_ms",
        "stages_ms",
        "operators",
    ):
        assert key in r, key
    assert set(r["inference_ms"]) == {"mean", "p50", "p90", "p99", "min", "max", "std"}
    assert set(r["stages_ms"]) == {"decode", "detect", "align", "embed", "match"}
    assert r["threads"] == 1 and r["runs"] == 5 and r["warmup_runs"] == 2
    s = r["inference_ms"]
    assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert r["operators"] and r["operators"][0]["op"] == "Conv"  # onnxruntime's profiler: convs dominate
    assert r["peak_rss_mb"] > 10 and r["match"] == {"kind": "1:1 cosine"}
    # the match stage as a 1:N search of a gallery made by this model
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.gallery import Gallery, ModelTag

    gal = tmp_path / "g.sqlite"
    with Gallery(gal) as g:
        vectors = np.random.default_rng(0).standard_normal((500, 128)).astype(np.float32)
        g.enroll_many(
            [(f"p{i}", vectors[i : i + 5], None) for i in range(0, 500, 5)],
            ModelTag.of(load_artifact(model).spec, model),
        )
    code, out, err = run(
        capsys,
        "profile",
        model,
        "--runs",
        "2",
        "--warmup",
        "0",
        "--no-operators",
        "--gallery",
        str(gal),
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["match"] == {"kind": "1:N top-5", "gallery": str(gal), "templates": 500}
    assert r["operators"] is None and r["stages_ms"]["match"]["min"] > 0


def test_raw_sample_verification_through_detection(model) -> None:
    """All 1,770 pairs of the 60 raw photos, detection to decision, at the artifact's own threshold (here
    calibrated on only 60+60 compression-split pairs, so noisier than an exported artifact's). The
    benchmark (benchmarks/raw_sample_verify.py) gives 99.2-99.3 % for the exported fp32/int8 artifacts;
    98.5 % here leaves room for the coarser threshold yet fails if detection, alignment or matching break
    (a box-resize crop instead of alignment, or a wrong template, costs several percent)."""
    from benchmarks.raw_sample_verify import run as verify_all

    r = verify_all(model)
    assert r["pairs"] == 1770 and r["same_pairs"] == 120
    assert r["correct_rate"] >= 0.985, r["correct_rate"]
