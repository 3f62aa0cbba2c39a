"""The model spec: the one contract between models, exporters and the on-device runtime.

Every model carries a spec, every artifact embeds it (ONNX metadata_props / TFLite metadata) and writes it
beside itself as `<artifact>.json`, and the runtime reads it. Nothing else guesses preprocessing: if two
places disagree about mean/std or channel order, verification silently degrades, which is the failure mode
this module exists to prevent. Pure stdlib so that it loads on a device without torch.

Preprocessing contract: an aligned face of `input_size` pixels in `channel_order`, values in [0, 255], is
fed as `(pixel / 255 - mean) / std` per channel, in `layout`. `GRAY` is one channel, the BT.601 luma of
the RGB face rounded to 8 bits (`runtime.preprocess.luma`), with one mean and one std value. If
`quantization.input` is set, the artifact takes integers: `q = round(x / scale) + zero_point` clipped
to the dtype's range.
"""

from __future__ import annotations

import json
import math
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
            "items": {"type": "integer", "minimum": 8, "maximum": 4096},
            "minItems": 2,
            "maxItems": 2,
            "description": "[height, width] of the aligned face",
        },
        "layout": {"enum": ["NCHW", "NHWC"]},
        "channel_order": {
            "enum": ["RGB", "BGR", "GRAY"],
            "description": "GRAY: one channel, the BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B rounded to 8 "
            "bits; readers that know only RGB and BGR refuse such a spec instead of misreading it",
        },
        "mean": {
            "type": "array",
            "items": {"type": "number"},
            "minItems": 1,
            "maxItems": 3,
            "description": "one value per channel: 3 for RGB/BGR, 1 for GRAY",
        },
        "std": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "minItems": 1,
            "maxItems": 3,
            "description": "one value per channel: 3 for RGB/BGR, 1 for GRAY",
        },
        "embedding_dim": {"type": "integer", "minimum": 1, "maximum": 65536},
        "face_crop": {
            "type": ["array", "null"],
            "items": {"type": "number"},
            "minItems": 4,
            "maxItems": 4,
            "description": "[x, y, width, height] of the region of the ArcFace-aligned 112x112 face that the "
            "network sees, scaled uniformly to input_size; null = the largest centred region of that face "
            "with input_size's aspect ratio (the whole face for square inputs, the central 96 columns for "
            "112x96)",
        },
        "threshold": {
            "type": ["number", "null"],
            "description": "cosine-similarity threshold for 1:1 verification",
        },
        "threshold_far": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "description": "FAR the threshold was set at",
        },
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
    "if": {"properties": {"channel_order": {"const": "GRAY"}}},
    "then": {"properties": {"mean": {"maxItems": 1}, "std": {"maxItems": 1}}},
    "else": {"properties": {"mean": {"minItems": 3}, "std": {"minItems": 3}}},
    "$defs": {
        "tensor_quant": {
            "type": ["object", "null"],
            "required": ["scale", "zero_point", "dtype"],
            "properties": {
                "scale": {"type": "number", "exclusiveMinimum": 0},
                "zero_point": {"type": "integer", "minimum": -128, "maximum": 255},
                "dtype": {"enum": ["int8", "uint8"]},
            },
        }
    },
}

MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; anything near this is not one
ALIGNED_SIDE = 112.0  # the ArcFace template's frame, in which face_crop is expressed
_LAYOUTS = ("NCHW", "NHWC")
_ORDERS = ("RGB", "BGR", "GRAY")
GRAY = "GRAY"
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
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # one value per channel
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    embedding_dim: int = 512
    face_crop: tuple[float, float, float, float] | None = None
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

    @property
    def channels(self) -> int:
        """Channels of the network input: 1 for GRAY, 3 for RGB/BGR."""
        return channel_count(self.channel_order)

    def crop_box(self) -> tuple[float, float, float, float]:
        """[x, y, w, h] of the ArcFace 112x112 frame that becomes the network input (see `face_crop`).

        Models trained on non-square faces (SphereFace/CosFace-style 112x96) see the central columns of the
        aligned face, not the whole face squeezed: the default is the largest centred region with the
        input's aspect ratio, so a 112x96 model gets columns 8..104 of the 112x112 crop.
        """
        if self.face_crop is not None:
            return self.face_crop
        h, w = self.input_size
        cw, ch = (ALIGNED_SIDE, ALIGNED_SIDE * h / w) if w >= h else (ALIGNED_SIDE * w / h, ALIGNED_SIDE)
        return ((ALIGNED_SIDE - cw) / 2, (ALIGNED_SIDE - ch) / 2, cw, ch)

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
            "face_crop": None if self.face_crop is None else [float(v) for v in self.face_crop],
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
            face_crop=None if data.get("face_crop") is None else tuple(float(v) for v in data["face_crop"]),  # type: ignore[arg-type]
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            threshold_far=None if data.get("threshold_far") is None else float(data["threshold_far"]),
            precision=data.get("precision", "fp32"),
            input_quant=_tensor_quant(q.get("input")),
            output_quant=_tensor_quant(q.get("output")),
            weight_quant=q.get("weights"),
            layer_bits=q.get("layer_bits"),
            provenance=dict(data.get("provenance") or {}),
        )

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> ModelSpec:
        data = parse_spec_object(text, source)
        try:
            return cls.from_dict(data)
        except EdgefaceError as e:
            raise EdgefaceError(f"{source}: {e}") from None


def parse_spec_object(text: str, source: str = "spec") -> dict[str, Any]:
    """JSON text -> a dict, with one error line naming `source` for anything that is not a JSON object."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        if not isinstance(e, json.JSONDecodeError):
            raise EdgefaceError(f"{source}: {e}") from None
        raise EdgefaceError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise EdgefaceError(f"{source}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise EdgefaceError(f"{source}: a spec must be a JSON object")
    return data


def _fail(msg: str) -> None:
    raise EdgefaceError(f"invalid model spec: {msg}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not valid JSON ({name} is not a number JSON allows)")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def channel_count(channel_order: str) -> int:
    return 1 if channel_order == GRAY else 3


def _numbers(data: dict[str, Any], key: str, n: int, why: str = "") -> list[float]:
    """Exactly `n` finite numbers: NaN or Infinity in a spec silently breaks every comparison downstream."""
    v = data.get(key)
    if not isinstance(v, list | tuple) or len(v) != n or not all(_is_number(x) for x in v):
        what = f"{n} finite number{'s' if n > 1 else ''}" + (f" ({why})" if why else "")
        _fail(f"'{key}' must be a list of {what}, got {v!r}")
    return list(v)  # type: ignore[arg-type]


def _tensor_quant(d: Any) -> TensorQuant | None:
    return (
        None
        if not d
        else TensorQuant(scale=float(d["scale"]), zero_point=int(d["zero_point"]), dtype=d["dtype"])
    )


def validate(data: dict[str, Any]) -> None:
    """Check a spec dict against JSON_SCHEMA; raise EdgefaceError naming the first bad field.

    Every number is checked finite and in range where it enters: a NaN mean or scale would make every
    embedding NaN, and NaN similarities compare in ways that let two strangers "match".
    """
    if not isinstance(data, dict):
        _fail("a spec must be a JSON object")
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        _fail(f"schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
    for key in JSON_SCHEMA["required"]:
        if key not in data:
            _fail(f"missing required field '{key}'")
    if not isinstance(data["name"], str) or not data["name"] or len(data["name"]) > 512:
        _fail("'name' must be a non-empty string (at most 512 characters)")
    size = _numbers(data, "input_size", 2)
    if any(not _is_int(s) or not 8 <= s <= 4096 for s in size):
        _fail(f"'input_size' must be two integers in [8, 4096], got {size}")
    if data["layout"] not in _LAYOUTS:
        _fail(f"'layout' must be one of {_LAYOUTS}, got {data['layout']!r}")
    if data["channel_order"] not in _ORDERS:
        _fail(f"'channel_order' must be one of {_ORDERS}, got {data['channel_order']!r}")
    n, why = channel_count(data["channel_order"]), f"one per channel of {data['channel_order']}"
    if any(abs(m) > 255 for m in _numbers(data, "mean", n, why)):
        _fail("'mean' values must lie in [-255, 255] (mean is in units of pixel / 255)")
    if any(not 1e-6 <= s <= 1e6 for s in _numbers(data, "std", n, why)):
        _fail("'std' values must be > 0 (and within [1e-6, 1e6])")
    dim = data["embedding_dim"]
    if not _is_int(dim) or not 1 <= dim <= 65536:
        _fail(f"'embedding_dim' must be an integer in [1, 65536], got {dim!r}")
    crop = data.get("face_crop")
    if crop is not None:
        x, y, w, h = _numbers(data, "face_crop", 4)
        if not (0 < w <= 3 * ALIGNED_SIDE and 0 < h <= 3 * ALIGNED_SIDE):
            _fail(f"'face_crop' width and height must lie in (0, {3 * ALIGNED_SIDE:g}], got {crop}")
        if not (-ALIGNED_SIDE <= x <= ALIGNED_SIDE and -ALIGNED_SIDE <= y <= ALIGNED_SIDE):
            _fail(f"'face_crop' x and y must lie in [-{ALIGNED_SIDE:g}, {ALIGNED_SIDE:g}], got {crop}")
        ih, iw = size
        if abs((w / h) / (iw / ih) - 1) > 0.01:
            _fail(
                f"'face_crop' {w:g}x{h:g} (w x h) does not have the aspect ratio of input_size {ih}x{iw} "
                "(h x w): faces are never resized to another aspect ratio"
            )
    thr = data.get("threshold")
    if thr is not None and (not _is_number(thr) or not -1.0 <= thr <= 1.0):
        _fail(f"'threshold' must be a cosine similarity in [-1, 1] or null, got {thr!r}")
    far = data.get("threshold_far")
    if far is not None and (not _is_number(far) or not 0.0 < far < 1.0):
        _fail(f"'threshold_far' must be a rate in (0, 1) or null, got {far!r}")
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
        if tq["dtype"] not in ("int8", "uint8"):
            _fail(f"'quantization.{side}.dtype' must be int8 or uint8")
        if not _is_number(tq["scale"]) or not 0 < tq["scale"] <= 1e6:
            _fail(f"'quantization.{side}.scale' must be > 0 and finite, got {tq['scale']!r}")
        lo, hi = (-128, 127) if tq["dtype"] == "int8" else (0, 255)
        if not _is_int(tq["zero_point"]) or not lo <= tq["zero_point"] <= hi:
            _fail(
                f"'quantization.{side}.zero_point' must be an integer in [{lo}, {hi}], "
                f"got {tq['zero_point']!r}"
            )
    bits = q.get("layer_bits")
    if bits is not None and (
        not isinstance(bits, dict)
        or not all(isinstance(k, str) and _is_int(v) and 2 <= v <= 16 for k, v in bits.items())
    ):
        _fail("'quantization.layer_bits' must map layer names to integer bit widths in [2, 16]")
    weights = q.get("weights")
    if weights is not None and not isinstance(weights, str):
        _fail("'quantization.weights' must be a string or null")
    if not isinstance(data.get("provenance") or {}, dict):
        _fail("'provenance' must be an object")


def write_spec_json(spec: ModelSpec, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written spec."""
    from edgeface.io import atomic_write_text

    return atomic_write_text(path, spec.to_json() + "\n")


def _read_spec_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise EdgefaceError(f"spec {path} is larger than {MAX_SPEC_BYTES // 1024} KB; not a model spec")
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise EdgefaceError(f"cannot read spec {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise EdgefaceError(f"spec {path} is not UTF-8 JSON text") from None


def read_spec_json(path: str | os.PathLike[str]) -> ModelSpec:
    """A complete spec (an artifact's sidecar): every required field must be there."""
    path = Path(path)
    return ModelSpec.from_json(_read_spec_text(path), source=str(path))


def read_declared_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A user's `--spec FILE.json` as a JSON object, which may leave fields out (`with_defaults`)."""
    path = Path(path)
    return parse_spec_object(_read_spec_text(path), str(path))


# Fields a declared spec may leave out; `with_defaults` fills them from a base spec and names them.
DEFAULTABLE = ("input_size", "layout", "channel_order", "mean", "std", "embedding_dim")


def with_defaults(declared: dict[str, Any], base: ModelSpec) -> tuple[ModelSpec, list[str]]:
    """The spec a model declares, with `base`'s value for each field it leaves out, and those fields.

    Users declare what differs from the defaults (a 112x96 input, their mean/std) and expect the rest to be
    the documented defaults. Fields that are present are validated as they are: a wrong value is never
    replaced. mean/std left out take `base`'s only when the channel count is the same, else 0.5 per channel
    (a GRAY model's one value); face_crop left out is null when input_size is declared (it follows that
    size), else base's. The caller measures an `embedding_dim` left out (registry.check_spec).
    """
    if not isinstance(declared, dict):
        _fail("a spec must be a JSON object")
    data = {k: v for k, v in base.to_dict().items() if k not in DEFAULTABLE}
    if "input_size" in declared:
        data["face_crop"] = None  # base's crop was for base's size; left out, it follows the declared one
    data.update(declared)
    data.setdefault("schema_version", SCHEMA_VERSION)
    missing = [k for k in DEFAULTABLE if k not in declared]
    order = declared.get("channel_order", base.channel_order)
    same = order in _ORDERS and channel_count(order) == base.channels
    defaults: dict[str, Any] = {
        "input_size": list(base.input_size),
        "layout": base.layout,
        "channel_order": base.channel_order,
        "mean": list(base.mean) if same else [0.5] * channel_count(order),
        "std": list(base.std) if same else [0.5] * channel_count(order),
        "embedding_dim": base.embedding_dim,
    }
    for key in missing:
        data[key] = defaults[key]
    try:
        return ModelSpec.from_dict(data), missing
    except EdgefaceError as e:
        if "input_size" in missing and "face_crop" in str(e):
            h, w = base.input_size
            raise EdgefaceError(f"{e}; input_size was not declared, so it is {h}x{w}: declare it") from None
        raise


def spec_path_for(artifact: str | os.PathLike[str]) -> Path:
    """`model_int8.onnx` -> `model_int8.onnx.json`: the sidecar sits beside the artifact it describes."""
    return Path(str(artifact) + ".json")
