"""Shared builders for the runtime tests (imported by the other test_runtime_* files) and their own checks.

The artifacts are real: the reference MobileFaceNet ONNX from ../shared with a spec whose threshold is
calibrated on LFW compression-split pairs (never the test folds), and an int8-I/O variant of it. Built once
per test session (functools.cache) because calibration runs the network on a few hundred faces.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeface.spec import METADATA_KEY, ModelSpec, TensorQuant, write_spec_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LFW = SHARED / "data" / "lfw"
RAW = LFW / "raw_sample"
REFERENCE_ONNX = SHARED / "models" / "mobilefacenet_ms1m.reference.onnx"
CALIBRATION_IDENTITIES = 60  # 60 genuine + 60 impostor compression-split pairs: ~120 images, a few seconds


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgeface-runtime-test-"))


@functools.cache
def reference_artifact() -> Path:
    """fp32 ONNX + sidecar spec with a calibrated threshold (see benchmarks/reference_artifact.py)."""
    from benchmarks.reference_artifact import make_reference_artifact

    return make_reference_artifact(scratch(), CALIBRATION_IDENTITIES)


def reference_spec() -> ModelSpec:
    from edgeface.spec import read_spec_json

    return read_spec_json(reference_artifact().with_name(reference_artifact().name + ".json"))


def copy_without_spec(dest_dir: Path) -> Path:
    dest = dest_dir / "no_spec.onnx"
    shutil.copyfile(REFERENCE_ONNX, dest)
    return dest


def with_embedded_spec(dest: Path, spec: ModelSpec) -> Path:
    """The exporter's format: the spec JSON in ONNX metadata_props under edgeface.spec."""
    import onnx

    model = onnx.load(str(REFERENCE_ONNX))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    onnx.save(model, str(dest))
    return dest


@functools.cache
def int8_io_artifact() -> Path:
    """The reference network behind an int8 input (DequantizeLinear) and an int8 output (QuantizeLinear).

    Exercises exactly the runtime's quantize-input / dequantize-output path with a real network. Scales:
    input covers the normalised pixel range [(0 - 0.485) / 0.229, (1 - 0.406) / 0.225] = [-2.12, 2.64]
    symmetrically; output covers the largest |embedding value| seen on a few faces, with 25 % headroom.
    """
    import onnx
    from onnx import TensorProto, helper

    spec = reference_spec()
    in_q = TensorQuant(scale=2.65 / 127, zero_point=0, dtype="int8")
    out_scale = _output_scale()
    out_q = TensorQuant(scale=out_scale, zero_point=0, dtype="int8")
    model = onnx.load(str(REFERENCE_ONNX))
    g = model.graph
    old_in, old_out = g.input[0], g.output[0]
    g.initializer.extend(
        [
            helper.make_tensor("in_scale", TensorProto.FLOAT, [], [in_q.scale]),
            helper.make_tensor("in_zp", TensorProto.INT8, [], [0]),
            helper.make_tensor("out_scale", TensorProto.FLOAT, [], [out_q.scale]),
            helper.make_tensor("out_zp", TensorProto.INT8, [], [0]),
        ]
    )
    g.node.insert(0, helper.make_node("DequantizeLinear", ["input_q", "in_scale", "in_zp"], [old_in.name]))
    g.node.append(helper.make_node("QuantizeLinear", [old_out.name, "out_scale", "out_zp"], ["output_q"]))
    new_in = helper.make_tensor_value_info("input_q", TensorProto.INT8, [1, 3, 112, 112])
    new_out = helper.make_tensor_value_info("output_q", TensorProto.INT8, [1, spec.embedding_dim])
    g.input.remove(old_in)
    g.output.remove(old_out)
    g.input.append(new_in)
    g.output.append(new_out)
    onnx.checker.check_model(model)
    dest = scratch() / "mobilefacenet_int8io.onnx"
    onnx.save(model, str(dest))
    write_spec_json(spec.replace(input_quant=in_q, output_quant=out_q), Path(str(dest) + ".json"))
    return dest


def _output_scale() -> float:
    from edgeface.runtime.backends import artifact_embedder, load_artifact

    faces = sorted((LFW / "aligned112").glob("A*/*_0001.jpg"))[:16]
    emb = artifact_embedder(load_artifact(reference_artifact()))(faces)
    return float(np.abs(emb).max() * 1.25 / 127)


def raw(name: str, i: int) -> Path:
    return RAW / name / f"{name}_{i:04d}.jpg"


# --- checks of the builders themselves ----------------------------------------------------------------
def test_reference_threshold_is_calibrated_on_compression_split() -> None:
    spec = reference_spec()
    assert spec.threshold is not None and 0.1 < spec.threshold < 0.6
    assert "compression-split" in spec.provenance["threshold"]


def test_calibration_pairs_avoid_test_identities() -> None:
    from benchmarks.reference_artifact import calibration_pairs
    from edgeface.data.lfw import read_pairs, test_identities

    images, pairs, labels = calibration_pairs(CALIBRATION_IDENTITIES)
    banned = test_identities(read_pairs(LFW / "pairs.txt"))
    assert not {p.parent.name for p in images} & banned
    assert labels.sum() == CALIBRATION_IDENTITIES and (~labels).sum() == CALIBRATION_IDENTITIES
    assert json.dumps(pairs.tolist())  # plain indices
