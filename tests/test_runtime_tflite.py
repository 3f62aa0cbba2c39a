"""Real .tflite artifacts through the runtime, run by LiteRT, with the spec embedded by the exporter's
metadata writer (edgeface.converters.metadata).

The graphs are built here with the TFLite flatbuffer schema (milliseconds, where converting even a tiny
torch model with litert-torch takes 10-100 s on a loaded 2-core machine): a global average pool (MEAN) and
a FULLY_CONNECTED layer, optionally wrapped in DEQUANTIZE / QUANTIZE so the artifact takes and returns
int8 like a fully integer-quantized export does. Expected outputs are computed in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from edgeface.runtime.backends import artifact_embedder, load_artifact
from edgeface.runtime.preprocess import normalize, read_image

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec, TensorQuant
from tests.test_runtime_support import LFW

FACES = sorted((LFW / "aligned112").glob("C*/*_0001.jpg"))[:5]
DIM = 32
SPEC = ModelSpec(
    name="poolfc", layout="NHWC", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), embedding_dim=DIM, threshold=0.5
)
IN_Q = TensorQuant(scale=1.0 / 127, zero_point=0, dtype="int8")  # normalised pixels lie in [-1, 1]
OUT_Q = TensorQuant(scale=0.02, zero_point=3, dtype="int8")
RNG = np.random.default_rng(0)
W = RNG.standard_normal((DIM, 3)).astype(np.float32)
B = RNG.standard_normal(DIM).astype(np.float32) * 0.1


def build_tflite(int8_io: bool) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    def tensor(name, shape, ttype=s.TensorType.FLOAT32, buffer=0, quant=None, dynamic=True):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), ttype, buffer
        if dynamic:
            t.shapeSignature = [-1, *shape[1:]]
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [quant.scale], [quant.zero_point]
            t.quantization = q
        return t

    def buffer(array=None):
        b = s.BufferT()
        if array is not None:
            b.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
        return b

    def opcode(code):
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        return c

    def op(index, inputs, outputs, options_type=0, options=None):
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    buffers = [buffer(), buffer(np.array([1, 2], np.int32)), buffer(W), buffer(B)]
    tensors = [
        tensor("x", [1, 112, 112, 3]),
        tensor("axes", [2], s.TensorType.INT32, 1, dynamic=False),
        tensor("pooled", [1, 3]),
        tensor("w", [DIM, 3], buffer=2, dynamic=False),
        tensor("b", [DIM], buffer=3, dynamic=False),
        tensor("y", [1, DIM]),
    ]
    mean_opts = s.ReducerOptionsT()
    mean_opts.keepDims = False
    fc_opts = s.FullyConnectedOptionsT()
    codes = [opcode(s.BuiltinOperator.MEAN), opcode(s.BuiltinOperator.FULLY_CONNECTED)]
    ops = [
        op(0, [0, 1], [2], s.BuiltinOptions.ReducerOptions, mean_opts),
        op(1, [2, 3, 4], [5], s.BuiltinOptions.FullyConnectedOptions, fc_opts),
    ]
    inputs, outputs = [0], [5]
    if int8_io:
        tensors += [
            tensor("x_q", [1, 112, 112, 3], s.TensorType.INT8, quant=IN_Q),
            tensor("y_q", [1, DIM], s.TensorType.INT8, quant=OUT_Q),
        ]
        codes += [opcode(s.BuiltinOperator.DEQUANTIZE), opcode(s.BuiltinOperator.QUANTIZE)]
        ops = [op(2, [6], [0]), *ops, op(3, [5], [7])]
        inputs, outputs = [6], [7]
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators, graph.name = (
        tensors,
        inputs,
        outputs,
        ops,
        "main",
    )
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    model.description = "edgeface runtime test graph"
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def expected(paths) -> np.ndarray:
    x = normalize([read_image(p) for p in paths], SPEC)  # NHWC
    return x.mean(axis=(1, 2)) @ W.T + B


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from edgeface.converters.metadata import embed_tflite_spec

    d = tmp_path_factory.mktemp("tflite")
    paths = {}
    for name, int8, spec in (
        ("fp32", False, SPEC),
        ("int8io", True, SPEC.replace(input_quant=IN_Q, output_quant=OUT_Q)),
    ):
        plain = d / f"{name}_plain.tflite"
        plain.write_bytes(build_tflite(int8))
        paths[name] = d / f"{name}.tflite"
        paths[name].write_bytes(embed_tflite_spec(plain.read_bytes(), spec))
        paths[f"{name}_plain"] = plain
    return paths


def test_float_tflite_with_embedded_spec(artifacts) -> None:
    art = load_artifact(artifacts["fp32"], num_threads=1)  # no sidecar: spec from the flatbuffer metadata
    assert art.backend in ("litert", "tflite-runtime") and art.spec == SPEC
    emb = artifact_embedder(art, batch_size=2)(FACES)  # batches of 2, 2, 1: the input is resized as needed
    np.testing.assert_allclose(emb, expected(FACES), rtol=1e-4, atol=1e-4)
    assert art.operator_profile(np.zeros((1, 112, 112, 3), np.float32), 2) is None  # no Python op profiler


def test_int8_tflite_quantizes_input_and_dequantizes_output(artifacts) -> None:
    art = load_artifact(artifacts["int8io"])
    assert art._input_dtype == np.int8 and art._output_dtype == np.int8  # noqa: SLF001
    emb = artifact_embedder(art)(FACES)
    ref = expected(FACES)
    # error budget: input step 1/127 through |W| (<= ~3 * max|W| / 127 / 2) plus half an output step
    bound = 3 * np.abs(W).max() / 127 / 2 + OUT_Q.scale / 2 + 1e-4
    assert np.abs(emb - ref).max() <= bound
    assert np.abs(emb - ref).max() > 1e-5  # really went through int8


def test_tflite_own_quant_params_when_spec_has_none(artifacts, tmp_path) -> None:
    """A spec without a quantization block falls back to the tensor's own scale/zero point."""
    from edgeface.spec import write_spec_json

    p = tmp_path / "int8.tflite"
    p.write_bytes(artifacts["int8io_plain"].read_bytes())
    write_spec_json(SPEC, tmp_path / "int8.tflite.json")
    art = load_artifact(p)
    for got, want in ((art._input_quant, IN_Q), (art._output_quant, OUT_Q)):  # noqa: SLF001
        assert (got.zero_point, got.dtype) == (want.zero_point, want.dtype)
        assert got.scale == pytest.approx(want.scale, rel=1e-6)  # stored as float32 in the flatbuffer
    assert np.abs(artifact_embedder(art)(FACES[:2]) - expected(FACES[:2])).max() < 0.1


def test_tflite_without_spec_or_broken(artifacts, tmp_path) -> None:
    with pytest.raises(EdgefaceError, match="artifact has no spec"):
        load_artifact(artifacts["fp32_plain"])
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x08\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(EdgefaceError, match="not a valid TFLite flatbuffer|artifact has no spec"):
        load_artifact(junk)
