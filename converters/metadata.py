"""Embed the model spec inside an artifact and read it back.

The runtime reads exactly these locations: ONNX `model.metadata_props["edgeface.spec"]`, TFLite a
`Model.metadata` entry named "edgeface.spec" whose buffer holds the UTF-8 JSON. TFLite is edited with the
flatbuffer schema that ai_edge_litert ships, so no TensorFlow is needed.
"""

from __future__ import annotations

from typing import Any

from edgeface.errors import EdgefaceError
from edgeface.spec import METADATA_KEY, ModelSpec

TFLITE_IDENTIFIER = b"TFL3"


def embed_onnx_spec(proto: Any, spec: ModelSpec) -> Any:
    """Set (or replace) the spec entry in an ONNX ModelProto's metadata_props, in place."""
    props = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    return proto


def read_onnx_spec(proto: Any, source: str = "ONNX model") -> ModelSpec:
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            return ModelSpec.from_json(p.value, source=f"{source} metadata")
    raise EdgefaceError(f"{source} carries no '{METADATA_KEY}' metadata")


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def embed_tflite_spec(data: bytes, spec: ModelSpec) -> bytes:
    """Return the flatbuffer with a Model.metadata entry "edgeface.spec" (replacing an old one)."""
    import flatbuffers
    import numpy as np

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for buf in model.buffers or []:
        # ai-edge-quantizer appends constant data after the flatbuffer and points at it by offset; repacking
        # moves everything, so such buffers are brought inline first (models here are far below 2 GB)
        if buf.offset and buf.offset > 1:
            buf.data = np.frombuffer(data, np.uint8, count=buf.size, offset=buf.offset).copy()
            buf.offset, buf.size = 0, 0
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_KEY]
    buffer = schema.BufferT()
    buffer.data = list(spec.to_json().encode("utf-8"))
    model.buffers = list(model.buffers or [])
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(max(1024, len(data) + 4096))
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def read_tflite_spec(data: bytes, source: str = "TFLite model") -> ModelSpec:
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if _name(meta.Name()) == METADATA_KEY:
            raw = model.Buffers(meta.Buffer()).DataAsNumpy()
            return ModelSpec.from_json(bytes(raw).decode("utf-8"), source=f"{source} metadata")
    raise EdgefaceError(f"{source} carries no '{METADATA_KEY}' metadata")


def _name(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
