"""Loading artifacts: spec lookup order, int8 input/output handling, the Embedder contract, bad artifacts."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from edgeface.runtime.backends import artifact_embedder, load_artifact, tflite_metadata

from edgeface.errors import EdgefaceError
from edgeface.spec import write_spec_json
from tests.test_runtime_support import (
    LFW,
    copy_without_spec,
    int8_io_artifact,
    reference_artifact,
    reference_spec,
    with_embedded_spec,
)

FACES = sorted((LFW / "aligned112").glob("B*/*_0001.jpg"))[:8]


def test_artifact_without_spec_is_refused(tmp_path) -> None:
    with pytest.raises(EdgefaceError, match="artifact has no spec"):
        load_artifact(copy_without_spec(tmp_path))


def test_sidecar_spec_is_read(tmp_path) -> None:
    a = load_artifact(reference_artifact())
    assert a.spec == reference_spec() and a.backend == "onnxruntime"


def test_embedded_spec_wins_over_sidecar(tmp_path) -> None:
    embedded = reference_spec().replace(threshold=0.42)
    path = with_embedded_spec(tmp_path / "m.onnx", embedded)
    assert load_artifact(path).spec.threshold == 0.42  # no sidecar at all
    write_spec_json(embedded.replace(threshold=0.11), tmp_path / "m.onnx.json")
    assert load_artifact(path).spec.threshold == 0.42


def test_bad_artifacts(tmp_path) -> None:
    with pytest.raises(EdgefaceError, match="artifact not found"):
        load_artifact(tmp_path / "missing.onnx")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(EdgefaceError, match="unknown artifact type"):
        load_artifact(tmp_path / "m.pt")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    write_spec_json(reference_spec(), tmp_path / "junk.onnx.json")
    with pytest.raises(EdgefaceError, match="cannot load ONNX artifact"):
        load_artifact(junk)
    bad_spec = tmp_path / "badspec.onnx"
    shutil.copyfile(reference_artifact(), bad_spec)
    (tmp_path / "badspec.onnx.json").write_text("{not json")
    with pytest.raises(EdgefaceError, match="not valid JSON"):
        load_artifact(bad_spec)
    wrong_dim = tmp_path / "dim.onnx"
    shutil.copyfile(reference_artifact(), wrong_dim)
    write_spec_json(reference_spec().replace(embedding_dim=512), tmp_path / "dim.onnx.json")
    with pytest.raises(EdgefaceError, match="embedding_dim=512"):
        load_artifact(wrong_dim).run(np.zeros((1, 3, 112, 112), np.float32))
    wrong_layout = tmp_path / "nhwc.onnx"
    shutil.copyfile(reference_artifact(), wrong_layout)
    write_spec_json(reference_spec().replace(layout="NHWC"), tmp_path / "nhwc.onnx.json")
    with pytest.raises(EdgefaceError, match="does not match the spec"):
        load_artifact(wrong_layout)


def test_int8_input_and_output_are_quantized_by_the_runtime() -> None:
    fp32 = artifact_embedder(load_artifact(reference_artifact()))(FACES)
    art = load_artifact(int8_io_artifact())
    assert art.spec.input_quant is not None and art._input_dtype == np.int8  # noqa: SLF001
    q = artifact_embedder(art)(FACES)
    assert q.dtype == np.float32 and q.shape == fp32.shape
    cos = (fp32 * q).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(q, axis=1)
    # 8-bit input (step 0.021 in normalised units) and output: close to, but not exactly, fp32.
    assert cos.min() > 0.98, cos
    assert not np.allclose(fp32, q, atol=1e-4)


def test_int8_spec_without_quant_params_is_refused(tmp_path) -> None:
    path = tmp_path / "int8.onnx"
    shutil.copyfile(int8_io_artifact(), path)
    write_spec_json(reference_spec(), tmp_path / "int8.onnx.json")  # no quantization block
    with pytest.raises(EdgefaceError, match="has no quantization.input"):
        load_artifact(path)


def test_embedder_contract_batches_and_flip() -> None:
    """Same contract as edgeface.eval.embed.torch_embedder: (N, D) float32, not normalised, flip = sum."""
    art = load_artifact(reference_artifact(), num_threads=1)
    plain = artifact_embedder(art, batch_size=3)(FACES)
    flipped = artifact_embedder(art, flip=True, batch_size=8)(FACES)
    assert plain.shape == (len(FACES), 128) and plain.dtype == np.float32
    assert not np.allclose(np.linalg.norm(plain, axis=1), 1.0)
    from edgeface.runtime.preprocess import normalize, read_image

    mirror = art.run(normalize([read_image(p) for p in FACES], art.spec, flip=True))
    np.testing.assert_allclose(flipped, plain + mirror, rtol=1e-4, atol=1e-4)
    assert artifact_embedder(art)([]).shape == (0, 128)


def _flatbuffer_with_metadata(entries: dict[str, bytes]) -> bytes:
    """A minimal Model flatbuffer holding only buffers and metadata, built with the flatbuffers package
    (schema-generated builders from ai_edge_litert), to test the struct reader against a real encoder."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    b = flatbuffers.Builder(1024)
    buffers, metas = [], []
    s.BufferStart(b)
    buffers.append(s.BufferEnd(b))  # buffer 0 is empty by convention
    for i, (name, data) in enumerate(entries.items(), start=1):
        vec = b.CreateByteVector(data)
        s.BufferStart(b)
        s.BufferAddData(b, vec)
        buffers.append(s.BufferEnd(b))
        n = b.CreateString(name)
        s.MetadataStart(b)
        s.MetadataAddName(b, n)
        s.MetadataAddBuffer(b, i)
        metas.append(s.MetadataEnd(b))
    s.ModelStartBuffersVector(b, len(buffers))
    for off in reversed(buffers):
        b.PrependUOffsetTRelative(off)
    bufvec = b.EndVector()
    s.ModelStartMetadataVector(b, len(metas))
    for off in reversed(metas):
        b.PrependUOffsetTRelative(off)
    metavec = b.EndVector()
    s.ModelStart(b)
    s.ModelAddVersion(b, 3)
    s.ModelAddBuffers(b, bufvec)
    s.ModelAddMetadata(b, metavec)
    b.Finish(s.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tflite_metadata_reader() -> None:
    spec_json = reference_spec().to_json().encode()
    buf = _flatbuffer_with_metadata({"min_runtime_version": b"1.5.0\0", "edgeface.spec": spec_json})
    meta = tflite_metadata(buf)
    assert meta["edgeface.spec"] == spec_json and meta["min_runtime_version"].startswith(b"1.5.0")
    assert tflite_metadata(_flatbuffer_with_metadata({})) == {}
    with pytest.raises((struct.error, IndexError, ValueError)):
        tflite_metadata(b"\xff\xff\xff\x7f" + b"\0" * 8)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_lookup_table_preprocessing_equals_normalise_then_quantize(which: str) -> None:
    """Artifact.embed feeds a quantized artifact codes from a pixel lookup table; they must be exactly the
    codes of quantizing the float input, and normalize must equal the spec's formula."""
    from edgeface.runtime.preprocess import normalize, read_image

    art = load_artifact(int8_io_artifact() if which == "int8" else reference_artifact(), num_threads=1)
    faces = [read_image(p) for p in FACES[:4]]
    for flip in (False, True):
        x = np.stack(faces).astype(np.float32)
        x = x[:, :, ::-1] if flip else x
        x = x[..., ::-1] if art.spec.channel_order == "RGB" else x
        mean, std = np.asarray(art.spec.mean, np.float32), np.asarray(art.spec.std, np.float32)
        ref = (x / 255.0 - mean) / std
        ref = ref.transpose(0, 3, 1, 2) if art.spec.layout == "NCHW" else ref
        assert np.array_equal(normalize(faces, art.spec, flip=flip), ref)
        native = art.native_input(faces, flip=flip)
        assert native.dtype == art._input_dtype  # noqa: SLF001
        assert np.array_equal(native, art._quantize_input(ref))  # noqa: SLF001
    np.testing.assert_array_equal(art.embed(faces), art.run(normalize(faces, art.spec)))
