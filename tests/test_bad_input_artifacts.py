"""Bad artifacts and specs, through `verify` (and `enroll`, whose gallery must not change).

The spec is data read from the artifact or its sidecar: every field that is used as a number is checked
where it enters (edgeface.spec for the spec's own fields, runtime.backends for quantization parameters and
for what the network returns), so a malformed one is one error line, and a non-finite one can never turn
into a match score.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_bad_input_support import (
    FACE,
    FACE2,
    artifact,
    artifact_copy,
    assert_one_error,
    make_gallery,
    run,
    snapshot,
)


def _quant(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        q = {"scale": 0.02, "zero_point": 0, "dtype": "int8", **fields}
        spec["quantization"] = {**(spec.get("quantization") or {}), "input": q}
        return spec

    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        spec[key] = value
        return spec

    return edit


# id -> (edit of the sidecar spec, fragment of the error line)
SPEC_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "zero_point-not-a-number": (_quant(zero_point="abc"), "zero_point"),
    "zero_point-out-of-int8-range": (_quant(zero_point=1000), "zero_point"),
    "zero_point-float": (_quant(zero_point=0.5), "zero_point"),
    "scale-nan": (_quant(scale=float("nan")), "scale"),
    "scale-infinity": (_quant(scale=float("inf")), "scale"),
    "scale-a-list": (_quant(scale=[1, 2]), "scale"),
    "quant-unknown-field": (_quant(rounding="up"), "int8 input but the artifact takes float32"),
    "quant-dtype-int4": (_quant(dtype="int4"), "int8 or uint8"),
    "mean-nan": (_set("mean", [float("nan"), 0.456, 0.406]), "mean"),
    "std-infinity": (_set("std", [float("inf"), 0.224, 0.225]), "std"),
    "std-nan": (_set("std", [0.229, float("nan"), 0.225]), "std"),
    "threshold-nan": (_set("threshold", float("nan")), "threshold"),
    "threshold-minus-infinity": (_set("threshold", float("-inf")), "threshold"),
    "embedding_dim-string": (_set("embedding_dim", "128"), "embedding_dim"),
    "input_size-huge": (_set("input_size", [100000, 100000]), "input"),
    "not-json": (lambda spec: "{ not json", "not valid JSON"),
    "json-list": (lambda spec: "[1, 2, 3]", "JSON object"),
    "binary-sidecar": (lambda spec: "\x00\x01\x02", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_spec(case: str, capsys, tmp_path: Path) -> None:
    edit, fragment = SPEC_CASES[case]
    model = artifact_copy(tmp_path / "art", edit)
    before = snapshot(tmp_path)
    r = run(capsys, "verify", FACE, FACE2, "--model", model)
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


def test_bad_spec_does_not_touch_the_gallery(capsys, tmp_path: Path) -> None:
    gallery = make_gallery(tmp_path / "g.sqlite")
    before = snapshot(gallery)
    model = artifact_copy(tmp_path / "art", _quant(zero_point="abc"))
    r = run(capsys, "enroll", "--name", "carol", FACE, "--model", model, "--gallery", gallery)
    assert_one_error(r, "zero_point")
    assert snapshot(gallery) == before


def _embedded(dest: Path, text: str) -> Path:
    import onnx

    from edgeface.spec import METADATA_KEY

    model = onnx.load(str(artifact()))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text
    onnx.save(model, str(dest))
    return dest


ARTIFACT_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "embedded-spec-zero_point-abc": (
        lambda d: _embedded(d / "m.onnx", json.dumps(_quant(zero_point="abc")(_spec()))),
        "zero_point",
    ),
    "embedded-spec-not-json": (lambda d: _embedded(d / "m.onnx", "{{{"), "not valid JSON"),
    "onnx-of-junk": (lambda d: _write(d / "m.onnx", bytes(range(256)) * 100), "cannot load ONNX artifact"),
    "onnx-truncated": (lambda d: _write(d / "m.onnx", artifact().read_bytes()[:5000]), "cannot load ONNX"),
    "tflite-of-junk": (lambda d: _write(d / "m.tflite", b"\xff" * 64), "TFLite"),
    "unknown-suffix": (lambda d: _write(d / "m.pt", b"x"), "unknown artifact type"),
    "folder": (lambda d: _mkdir(d / "m.onnx"), "is a directory"),
    "missing": (lambda d: d / "none.onnx", "artifact not found"),
}


def _spec() -> dict[str, Any]:
    return json.loads(Path(str(artifact()) + ".json").read_text())


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_bad_artifact(case: str, capsys, tmp_path: Path) -> None:
    make, fragment = ARTIFACT_CASES[case]
    model = make(tmp_path)
    before = snapshot(tmp_path)
    r = run(capsys, "verify", FACE, FACE2, "--model", model)
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "quantization, fragment",
    [((float("nan"), 0), "scale nan"), ((float("inf"), 0), "scale inf"), ((0.1, 300), "zero_point 300")],
)
def test_tflite_tensor_quantization_read_from_the_file_is_checked(quantization, fragment) -> None:
    """Without a spec quantization block the runtime falls back on the TFLite tensor's own parameters,
    numbers read from the flatbuffer like any other."""
    import numpy as np
    from edgeface.runtime.backends import _tflite_quant

    from edgeface.errors import EdgefaceError

    details = {"name": "serving_default_input:0", "dtype": np.int8, "quantization": quantization}
    with pytest.raises(EdgefaceError, match=fragment):
        _tflite_quant(details, Path("m.tflite"))
    assert _tflite_quant({**details, "quantization": (0.1, 3)}, Path("m.tflite")).zero_point == 3
