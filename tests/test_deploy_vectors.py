"""The shared test vectors (tests/data/vectors) agree with the Python runtime, recomputed now.

The Android app's JVM tests check its Kotlin port against the same file; this side makes sure the file
still says what `edgeface.runtime` computes, so neither side can drift or go stale silently. Regenerate
with tools/make_test_vectors.py (its docstring has the command).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgeface.runtime.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.match import cosine_similarity, verify
from edgeface.runtime.preprocess import l2_normalize, normalize, read_image

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec, TensorQuant, read_spec_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VECTORS_DIR = ROOT / "tests" / "data" / "vectors"
VECTORS: dict[str, Any] = json.loads((VECTORS_DIR / "vectors.json").read_text())
TOL = VECTORS["tolerance"]


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_test_vectors", ROOT / "tools" / "make_test_vectors.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


GEN = _load_generator()


def _spec(name: str) -> ModelSpec:
    return read_spec_json(VECTORS_DIR / name)


def _check_summary(t: np.ndarray, expected: dict[str, Any], tol: float) -> None:
    assert list(t.shape) == expected["shape"] and str(t.dtype) == expected["dtype"]
    got = GEN.tensor_summary(t)
    for key in ("sum", "sum_squares", "weighted_sum"):
        assert got[key] == pytest.approx(expected[key], rel=tol, abs=tol), key
    for (i, value), (j, want) in zip(got["samples"], expected["samples"], strict=True):
        assert i == j and value == pytest.approx(want, abs=tol), f"element {i}"


def test_vectors_cover_what_the_app_tests():
    assert VECTORS["format"] == GEN.FORMAT
    assert {c["spec"] for c in VECTORS["preprocess"]} == set(VECTORS["specs"])
    assert any(_spec(s).layout == "NHWC" and _spec(s).input_quant for s in VECTORS["specs"])
    assert any(_spec(s).layout == "NCHW" and _spec(s).input_quant is None for s in VECTORS["specs"])
    assert VECTORS["artifacts"] and VECTORS["artifacts"][0]["spec"] in VECTORS["specs"]
    assert {p["match"] for p in VECTORS["artifacts"][0]["pairs"]} == {True, False}


@pytest.mark.parametrize("name", VECTORS["specs"])
def test_spec_files_parse_and_round_trip(name):
    raw = json.loads((VECTORS_DIR / name).read_text())
    assert _spec(name).to_dict() == raw


@pytest.mark.parametrize("case", VECTORS["invalid_specs"], ids=lambda c: c["field"])
def test_invalid_specs_are_rejected_naming_the_field(case):
    with pytest.raises(EdgefaceError, match=case["field"].replace(".", r"\.")):
        ModelSpec.from_dict(case["spec"])


def test_invalid_spec_cases_match_the_generator():
    base = _spec(VECTORS["artifacts"][0]["spec"]).to_dict()
    assert GEN.invalid_spec_cases(base) == VECTORS["invalid_specs"]


@pytest.mark.parametrize("case", VECTORS["preprocess"], ids=lambda c: c["spec"])
def test_preprocessing_of_the_pattern(case):
    spec = _spec(case["spec"])
    h, w = spec.input_size
    image = GEN.pattern_bgr(h, w)
    assert image[0, 1].tolist() == [24, 85, 146] and image[1, 0].tolist() == [30, 91, 152]  # the formula
    x = normalize([image], spec)
    _check_summary(x, case["float"], TOL["float"])
    if spec.input_quant is None:
        assert "quantized" not in case
    else:
        _check_summary(spec.input_quant.quantize(x), case["quantized"], 0.0)


@pytest.mark.parametrize("case", VECTORS["quantization"], ids=lambda c: f"{c['dtype']}-{c['scale']}")
def test_quantization_round_half_even_and_clip(case):
    tq = TensorQuant(scale=case["scale"], zero_point=case["zero_point"], dtype=case["dtype"])
    q = tq.quantize(np.array(case["x"], np.float32))
    assert q.tolist() == case["q"]
    np.testing.assert_allclose(tq.dequantize(q), case["dequantized"], rtol=0, atol=1e-6)
    assert GEN.quantization_cases() == VECTORS["quantization"]


@functools.cache
def _csv_landmarks() -> dict[str, list[float]]:
    with open(SHARED / "data" / "lfw" / "landmarks.csv", newline="") as f:
        return {r["file"]: [float(v) for k, v in r.items() if k != "file"] for r in csv.DictReader(f)}


def _closed_form_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2-D least-squares similarity as the Kotlin app computes it (no SVD): for centred points,
    [a -b; b a] with a = sum(s.d)/sum(|s|^2), b = sum(s x d)/sum(|s|^2). Equal to Umeyama without
    reflection."""
    s, d = src - src.mean(0), dst - dst.mean(0)
    norm = (s**2).sum()
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    m = np.array([[a, -b, 0.0], [b, a, 0.0]])
    m[:, 2] = dst.mean(0) - m[:, :2] @ src.mean(0)
    return m


@pytest.mark.parametrize("case", VECTORS["alignment"], ids=lambda c: Path(c["image"]).stem)
def test_alignment_matrix(case):
    np.testing.assert_array_equal(case["template"], ARCFACE_TEMPLATE)
    rel = case["image"].removeprefix("data/lfw/raw_sample/")
    src = np.array(case["landmarks"])
    np.testing.assert_allclose(src.ravel(), _csv_landmarks()[rel], atol=1e-9)  # real LFW landmarks
    m = similarity_transform(src, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(m, case["matrix"], atol=TOL["matrix"])
    np.testing.assert_allclose(_closed_form_similarity(src, ARCFACE_TEMPLATE), m, atol=1e-9)
    mapped = src @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 8.0  # a real face lands near the template


def test_cosine_case():
    for case in VECTORS["cosine"]:
        got = cosine_similarity(np.array(case["a"]), np.array(case["b"]))
        assert got == pytest.approx(case["cosine"], abs=TOL["cosine"])


@pytest.mark.parametrize("section", VECTORS["artifacts"], ids=lambda s: s["artifact"])
def test_stored_embeddings_pairs_and_raw_outputs_are_consistent(section):
    emb = np.array([f["embedding"] for f in section["faces"]], np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for pair in section["pairs"]:
        d = verify(emb[pair["a"]], emb[pair["b"]], section["threshold"])
        assert d.score == pytest.approx(pair["cosine"], abs=TOL["cosine"]) and d.match == pair["match"]
    spec = _spec(section["spec"])
    assert spec.threshold == section["threshold"] and spec.embedding_dim == emb.shape[1]
    if "raw_output" in section:
        deq = spec.output_quant.dequantize(np.array(section["raw_output"]))  # type: ignore[union-attr]
        np.testing.assert_allclose(l2_normalize(deq), emb, atol=TOL["embedding"])
    reference = np.array([f["embedding"] for f in VECTORS["artifacts"][0]["faces"]], np.float32)
    assert np.all(np.sum(emb * reference, axis=1) > 0.95), "a compressed model must agree with fp32"


def test_fp32_embeddings_recomputed_from_shared(tmp_path):
    """The reference artifact is ../shared's ONNX plus the committed spec: embed the raw photos again."""
    section = VECTORS["artifacts"][0]
    spec = _spec(section["spec"])
    assert spec.provenance["source"] == "shared/models/mobilefacenet_ms1m.reference.onnx"
    artifact_path = tmp_path / section["artifact"]
    shutil.copyfile(SHARED / "models" / "mobilefacenet_ms1m.reference.onnx", artifact_path)
    shutil.copyfile(VECTORS_DIR / section["spec"], tmp_path / section["spec"])
    artifact = load_artifact(artifact_path)
    landmarks = {c["image"]: np.array(c["landmarks"]) for c in VECTORS["alignment"]}
    crops = [align_face(read_image(SHARED / f["image"]), landmarks[f["image"]]) for f in section["faces"]]
    emb = l2_normalize(artifact.run(normalize(crops, spec)))
    np.testing.assert_allclose(emb, [f["embedding"] for f in section["faces"]], atol=TOL["embedding"])
    for pair in section["pairs"]:
        d = verify(emb[pair["a"]], emb[pair["b"]], spec.threshold)
        assert d.score == pytest.approx(pair["cosine"], abs=1e-4) and d.match == pair["match"]
    pattern = l2_normalize(artifact.run(normalize([GEN.pattern_bgr(112, 112)], spec)))[0]
    np.testing.assert_allclose(pattern, section["pattern_embedding"], atol=TOL["embedding"])
