from __future__ import annotations

import json

import numpy as np
import pytest

from edgeface.errors import EdgefaceError
from edgeface.spec import (
    JSON_SCHEMA,
    ModelSpec,
    TensorQuant,
    read_spec_json,
    spec_path_for,
    validate,
    write_spec_json,
)


def _spec(**kw) -> ModelSpec:
    return ModelSpec(name="m", embedding_dim=128, **kw)


def test_round_trip_through_json(tmp_path):
    spec = _spec(
        threshold=0.31,
        threshold_far=1e-3,
        precision="w8a8",
        layout="NHWC",
        input_quant=TensorQuant(0.0078, -1, "int8"),
        output_quant=TensorQuant(0.05, 3, "int8"),
        weight_quant="int8 symmetric per-channel",
        layer_bits={"conv1": 8},
        provenance={"weights": "x.pt"},
    )
    path = write_spec_json(spec, tmp_path / "a.onnx.json")
    assert read_spec_json(path) == spec
    assert spec_path_for(tmp_path / "a.onnx") == path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_every_required_key_is_in_the_schema_and_the_dict():
    d = _spec().to_dict()
    assert set(JSON_SCHEMA["required"]) <= set(d)
    assert set(d) <= set(JSON_SCHEMA["properties"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layout": "CHW"}, "'layout' must be one of"),
        ({"channel_order": "YUV"}, "'channel_order'"),
        ({"mean": [0.5, 0.5]}, "'mean' must be a list of 3 finite numbers"),
        ({"mean": [0.5, float("nan"), 0.5]}, "'mean' must be a list of 3 finite numbers"),
        ({"std": [0.5, float("inf"), 0.5]}, "'std' must be a list of 3 finite numbers"),
        ({"input_size": [112, 10**9]}, "'input_size' must be two integers in"),
        ({"input_size": [112.5, 112]}, "'input_size' must be two integers in"),
        ({"embedding_dim": True}, "'embedding_dim'"),
        ({"threshold": float("-inf")}, "'threshold'"),
        ({"threshold": float("nan")}, "'threshold'"),
        ({"threshold_far": 0.0}, "'threshold_far'"),
        ({"face_crop": [0, 0, 112, 100]}, "aspect ratio"),
        ({"face_crop": [0, 0, float("nan"), 112]}, "'face_crop'"),
        ({"face_crop": [0, 0, -5, 112]}, "'face_crop' width"),
        ({"quantization": {"input": {"scale": 0.1, "zero_point": "7", "dtype": "int8"}}}, "zero_point"),
        ({"quantization": {"input": {"scale": 0.1, "zero_point": 300, "dtype": "int8"}}}, "zero_point"),
        ({"quantization": {"input": {"scale": 0.1, "zero_point": 1.5, "dtype": "uint8"}}}, "zero_point"),
        ({"quantization": {"output": {"scale": float("nan"), "zero_point": 0, "dtype": "int8"}}}, "scale"),
        ({"quantization": {"layer_bits": {"conv1": "8"}}}, "layer_bits"),
        ({"provenance": [1, 2]}, "'provenance'"),
        ({"std": [0.5, 0.0, 0.5]}, "'std' values must be > 0"),
        ({"embedding_dim": 0}, "'embedding_dim'"),
        ({"threshold": 1.5}, "'threshold'"),
        ({"input_size": [112]}, "'input_size'"),
        ({"schema_version": 99}, "schema_version 99"),
        ({"precision": "int3"}, "'precision'"),
        ({"quantization": {"input": {"scale": 0, "zero_point": 0, "dtype": "int8"}}}, "scale' must be > 0"),
    ],
)
def test_validation_names_the_bad_field(change, message):
    d = _spec().to_dict()
    d.update(change)
    with pytest.raises(EdgefaceError, match=message):
        validate(d)


def test_missing_field_and_bad_json(tmp_path):
    d = _spec().to_dict()
    del d["embedding_dim"]
    with pytest.raises(EdgefaceError, match="missing required field 'embedding_dim'"):
        ModelSpec.from_dict(d)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgefaceError, match="not valid JSON"):
        read_spec_json(bad)
    with pytest.raises(EdgefaceError, match="cannot read spec"):
        read_spec_json(tmp_path / "missing.json")


def test_non_finite_json_constants_are_refused(tmp_path):
    d = _spec().to_dict()
    text = json.dumps(d).replace('"threshold": null', '"threshold": NaN')
    with pytest.raises(EdgefaceError, match="NaN"):
        ModelSpec.from_json(text)
    (tmp_path / "s.json").write_text(json.dumps(d).replace('"mean": [0.5', '"mean": [Infinity'))
    with pytest.raises(EdgefaceError, match="Infinity"):
        read_spec_json(tmp_path / "s.json")


@pytest.mark.parametrize(
    ("size", "box"),
    [((112, 112), (0, 0, 112, 112)), ((112, 96), (8, 0, 96, 112)), ((96, 112), (0, 8, 112, 96))],
)
def test_default_face_crop_keeps_the_aspect_ratio(size, box):
    spec = ModelSpec(name="m", input_size=size)
    assert spec.crop_box() == pytest.approx(box)
    custom = spec.replace(face_crop=(4.0, 2.0, 104.0, 104.0 * size[0] / size[1]))
    assert ModelSpec.from_json(custom.to_json()).crop_box() == custom.face_crop


def test_tensor_quant_rounds_and_saturates():
    tq = TensorQuant(scale=0.5, zero_point=10, dtype="int8")
    q = tq.quantize(np.array([0.0, 0.26, -0.74, 1000.0, -1000.0]))
    assert q.dtype == np.int8
    assert q.tolist() == [10, 11, 9, 127, -128]
    assert tq.dequantize(q).tolist() == [0.0, 0.5, -0.5, 58.5, -69.0]
    assert TensorQuant(1.0, 0, "uint8").quantize(np.array([-3.0, 300.0])).tolist() == [0, 255]


def test_sidecar_is_valid_json_schema_instance(tmp_path):
    path = write_spec_json(_spec(), tmp_path / "x.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["quantization"]["input"] is None
