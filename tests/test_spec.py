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
        ({"mean": [0.5, 0.5]}, "'mean' must be a list of 3 numbers"),
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
