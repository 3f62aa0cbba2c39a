"""The model spec: the one contract between models, exporters and the on-device runtime.

Every model carries a spec, every artifact embeds it (ONNX metadata_props / TFLite metadata) and writes it
beside itself as `<artifact>.json`, and the runtime reads it. Nothing else guesses preprocessing: if two
places disagree about mean/std or channel order, verification silently degrades, which is the failure mode
this module exists to prevent. Pure stdlib so that it loads on a device without torch.

Preprocessing contract: an aligned face of `input_size` pixels in `channel_order`, values in [0, 255], is
fed as `(pixel / 255 - mean) / std` per channel, in `layout`. If `quantization.input` is set, the artifact
takes integers: `q = round(x / scale) + zero_point` clipped to the dtype's range.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeface.errors import EdgefaceError

SCHEMA_VERSION = 1
METADATA_KEY = "edgeface.spec"  # key under which artifacts embed the JSON

# JSON Schema (draft 2020-12) of the spec; documented in docs/spec.md. `validate` below enforces it
# without a jsonschema dependency, which a phone or a Pi should not need.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://edgeface.dev/schemas/spec-1.json",
    "title": "edgeface model spec",
    "type": "object",
    "required": [
        "schema_version",
        "name",
        "input_size",
        "layout",
        "channel_order",
        "mean",
        "std",
        "embedding_dim",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "minLength": 1},
        "input_size": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 2,
            "maxItems": 2,
            "description": "[height, width] of the aligned face",
        },
        "layout": {"enum": ["NCHW", "NHWC"]},
        "channel_order": {"enum": ["RGB", "BGR"]},
        "mean": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "std": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "minItems": 3,
            "maxItems": 3,
        },
        "embedding_dim": {"type": "integer", "minimum": 1},
        "threshold": {
            "type": ["number", "null"],
            "description": "cosine-similarity threshold for 1:1 verification",
        },
        "threshold_far": {"type": ["number", "null"], "description": "FAR the threshold was set at"},
        "precision": {"enum": ["fp32", "w8a8", "w6a6", "mixed"]},
        "quantization": {
            "type": "object",
            "properties": {
                "input": {"$ref": "#/$defs/tensor_quant"},
                "output": {"$ref": "#/$defs/tensor_quant"},
                "weights": {"type": ["string", "null"]},
                "layer_bits": {"type": ["object", "null"]},
            },
        },
        "provenance": {"type": "object"},
    },
    "$defs": {
        "tensor_quant": {
            "type": ["object", "null"],
            "required": ["scale", "zero_point", "dtype"],
            "properties": {
                "scale": {"type": "number", "exclusiveMinimum": 0},
                "zero_point": {"type": "integer"},
                "dtype": {"enum": ["int8", "uint8"]},
            },
        }
    },
}

_LAYOUTS = ("NCHW", "NHWC")
_ORDERS = ("RGB", "BGR")
_PRECISIONS = ("fp32", "w8a8", "w6a6", "mixed")


@dataclass(frozen=True)
class TensorQuant:
    """Affine int8 quantization of one graph input or output."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def quantize(self, x: Any) -> Any:
        import numpy as np

        lo, hi = (-128, 127) if self.dtype == "int8" else (0, 255)
        q = np.clip(np.round(np.asarray(x, dtype=np.float32) / self.scale) + self.zero_point, lo, hi)
        return q.astype(self.dtype)

    def dequantize(self, q: Any) -> Any:
        import numpy as np

        return (np.asarray(q, dtype=np.float32) - self.zero_point) * np.float32(self.scale)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_size: tuple[int, int] = (112, 112)
    layout: str = "NCHW"
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    embedding_dim: int = 512
    threshold: float | None = None
    threshold_far: float | None = None
    precision: str = "fp32"
    input_quant: TensorQuant | None = None
    output_quant: TensorQuant | None = None
    weight_quant: str | None = None  # e.g. "int8 symmetric per-channel (axis 0)"
    layer_bits: dict[str, int] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self.to_dict())

    def replace(self, **changes: Any) -> ModelSpec:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ModelSpec(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "input_size": list(self.input_size),
            "layout": self.layout,
            "channel_order": self.channel_order,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "embedding_dim": int(self.embedding_dim),
            "threshold": self.threshold,
            "threshold_far": self.threshold_far,
            "precision": self.precision,
            "quantization": {
                "input": asdict(self.input_quant) if self.input_quant else None,
                "output": asdict(self.output_quant) if self.output_quant else None,
                "weights": self.weight_quant,
                "layer_bits": self.layer_bits,
            },
            "provenance": dict(self.provenance),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        validate(data)
        q = data.get("quantization") or {}
        return cls(
            name=data["name"],
            input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
            layout=data["layout"],
            channel_order=data["channel_order"],
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            embedding_dim=int(data["embedding_dim"]),
            threshold=data.get("threshold"),
            threshold_far=data.get("threshold_far"),
            precision=data.get("precision", "fp32"),
            input_quant=TensorQuant(**q["input"]) if q.get("input") else None,
            output_quant=TensorQuant(**q["output"]) if q.get("output") else None,
            weight_quant=q.get("weights"),
            layer_bits=q.get("layer_bits"),
            provenance=dict(data.get("provenance") or {}),
        )

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise EdgefaceError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise EdgefaceError(f"{source}: a spec must be a JSON object")
        try:
            return cls.from_dict(data)
        except EdgefaceError as e:
            raise EdgefaceError(f"{source}: {e}") from None


def _fail(msg: str) -> None:
    raise EdgefaceError(f"invalid model spec: {msg}")


def _numbers(data: dict[str, Any], key: str, n: int) -> list[float]:
    v = data.get(key)
    if (
        not isinstance(v, list | tuple)
        or len(v) != n
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
    ):
        _fail(f"'{key}' must be a list of {n} numbers, got {v!r}")
    return list(v)  # type: ignore[arg-type]


def validate(data: dict[str, Any]) -> None:
    """Check a spec dict against JSON_SCHEMA; raise EdgefaceError naming the first bad field."""
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        _fail(f"schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
    for key in JSON_SCHEMA["required"]:
        if key not in data:
            _fail(f"missing required field '{key}'")
    if not isinstance(data["name"], str) or not data["name"]:
        _fail("'name' must be a non-empty string")
    size = _numbers(data, "input_size", 2)
    if any(int(s) != s or s < 1 for s in size):
        _fail(f"'input_size' must be two positive integers, got {size}")
    if data["layout"] not in _LAYOUTS:
        _fail(f"'layout' must be one of {_LAYOUTS}, got {data['layout']!r}")
    if data["channel_order"] not in _ORDERS:
        _fail(f"'channel_order' must be one of {_ORDERS}, got {data['channel_order']!r}")
    _numbers(data, "mean", 3)
    if any(s <= 0 for s in _numbers(data, "std", 3)):
        _fail("'std' values must be > 0")
    dim = data["embedding_dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        _fail(f"'embedding_dim' must be a positive integer, got {dim!r}")
    thr = data.get("threshold")
    if thr is not None and (not isinstance(thr, int | float) or not -1.0 <= thr <= 1.0):
        _fail(f"'threshold' must be a cosine similarity in [-1, 1] or null, got {thr!r}")
    if data.get("precision", "fp32") not in _PRECISIONS:
        _fail(f"'precision' must be one of {_PRECISIONS}, got {data.get('precision')!r}")
    q = data.get("quantization") or {}
    if not isinstance(q, dict):
        _fail("'quantization' must be an object")
    for side in ("input", "output"):
        tq = q.get(side)
        if tq is None:
            continue
        if not isinstance(tq, dict) or {"scale", "zero_point", "dtype"} - set(tq):
            _fail(f"'quantization.{side}' needs scale, zero_point and dtype")
        if not isinstance(tq["scale"], int | float) or tq["scale"] <= 0:
            _fail(f"'quantization.{side}.scale' must be > 0")
        if tq["dtype"] not in ("int8", "uint8"):
            _fail(f"'quantization.{side}.dtype' must be int8 or uint8")


def write_spec_json(spec: ModelSpec, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written spec."""
    from edgeface.io import atomic_write_text

    return atomic_write_text(path, spec.to_json() + "\n")


def read_spec_json(path: str | os.PathLike[str]) -> ModelSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise EdgefaceError(f"cannot read spec {path}: {e.strerror}") from None
    return ModelSpec.from_json(text, source=str(path))


def spec_path_for(artifact: str | os.PathLike[str]) -> Path:
    """`model_int8.onnx` -> `model_int8.onnx.json`: the sidecar sits beside the artifact it describes."""
    return Path(str(artifact) + ".json")
