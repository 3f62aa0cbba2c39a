"""Load an exported artifact (.onnx with onnxruntime, .tflite with LiteRT) and run it on float batches.

The artifact's spec is the only source of preprocessing and quantization facts: it is read from the
artifact itself (ONNX metadata_props / TFLite metadata under `edgeface.spec`), else from the sidecar
`<artifact>.json`, else loading fails. Integer input/output quantization is applied here, so callers hand
in the float batch `preprocess.normalize` produced (`run`) or aligned uint8 faces (`embed`, what the
device does) and get float embeddings back, whatever the artifact.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from edgeface.runtime.preprocess import apply_table, input_table, read_image

from edgeface.errors import EdgefaceError
from edgeface.quiet import native_quiet
from edgeface.spec import METADATA_KEY, ModelSpec, TensorQuant, read_spec_json, spec_path_for

if TYPE_CHECKING:
    from edgeface.runtime.pack import Pack

SUFFIXES = (".onnx", ".tflite")
# onnxruntime session config that keeps an artifact's float layers float (see OnnxArtifact._make_session)
ORT_KEEP_FLOAT = ("optimization.disable_specified_optimizers", "WeightBiasQuantization")
Embedder = Callable[[Sequence[Path]], np.ndarray]


class Artifact:
    """An inference session plus its spec; `run` maps a float batch to (N, D) float32 embeddings."""

    spec: ModelSpec
    path: Path
    backend: str
    num_threads: int | None
    init_ms: float  # session creation time, reported by `edgeface profile`
    pack: Pack | None = None  # the pack it was loaded from (load_artifact): its detector comes with it

    @property
    def detector_path(self) -> Path | None:
        """The pack's face detector, checked against its manifest; None outside a pack."""
        return self.pack.detector_path if self.pack is not None else None

    @property
    def landmarker_path(self) -> Path | None:
        """The pack's face-mesh landmark model, if it holds one (checked like the detector)."""
        return self.pack.landmarker_path if self.pack is not None else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4:
            raise EdgefaceError(f"expected a 4-d batch in {self.spec.layout}, got shape {batch.shape}")
        return self._forward(self._quantize_input(batch))

    def embed(self, faces_bgr: Sequence[np.ndarray], flip: bool = False) -> np.ndarray:
        """Aligned BGR uint8 faces -> (N, D) float32 embeddings: preprocessing included, as on the device."""
        return self._forward(self.native_input(faces_bgr, flip))

    def native_input(self, faces_bgr: Sequence[np.ndarray], flip: bool = False) -> np.ndarray:
        """Aligned faces -> the artifact's own input (float, or the integer codes of a quantized input).

        An integer input comes straight from a per-channel lookup table (pixel -> code) that folds the
        quantization into the normalisation: the same codes as quantizing `normalize`'s floats, without
        the float pass.
        """
        x = apply_table(faces_bgr, self.spec, self._table, flip)
        return x.astype(self._input_dtype, copy=False)  # a float16 input: cv2.LUT has no float16 tables

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self._fixed_batch_one and len(x) != 1:
            out = np.concatenate([self.invoke(x[i : i + 1]) for i in range(len(x))])
        else:
            out = self.invoke(x)
        return self._dequantize_output(out)

    # --- quantization ------------------------------------------------------------------------------------
    _input_dtype: np.dtype
    _output_dtype: np.dtype
    _input_quant: TensorQuant | None
    _output_quant: TensorQuant | None
    _fixed_batch_one: bool
    _table: np.ndarray  # pixel -> this artifact's input, preprocess.input_table

    def _setup_quant(self, native_in: TensorQuant | None, native_out: TensorQuant | None) -> None:
        """Spec first; a TFLite tensor's own parameters are the fallback when the spec leaves them out."""
        self._input_quant = self.spec.input_quant or native_in
        self._output_quant = self.spec.output_quant or native_out
        for side, dtype, quant in (
            ("input", self._input_dtype, self._input_quant),
            ("output", self._output_dtype, self._output_quant),
        ):
            integer = np.issubdtype(dtype, np.integer)
            if integer and quant is None:
                raise EdgefaceError(
                    f"{self.path}: the artifact's {side} is {dtype} but its spec has no quantization.{side} "
                    "(scale, zero_point)"
                )
            if not integer and side == "input" and self.spec.input_quant is not None:
                raise EdgefaceError(
                    f"{self.path}: the spec declares an {self.spec.input_quant.dtype} input but the artifact "
                    f"takes {dtype}"
                )
            if integer and quant is not None and np.dtype(quant.dtype) != dtype:
                raise EdgefaceError(
                    f"{self.path}: the spec declares {side} dtype {quant.dtype} but the artifact uses {dtype}"
                )
        integer_input = np.issubdtype(self._input_dtype, np.integer)
        table = input_table(self.spec, self._input_quant if integer_input else None)
        self._table = table.astype(self._input_dtype, copy=False) if integer_input else table

    def _quantize_input(self, x: np.ndarray) -> np.ndarray:
        if np.issubdtype(self._input_dtype, np.integer):
            return self._input_quant.quantize(x)  # type: ignore[union-attr]
        return x.astype(self._input_dtype, copy=False)

    def _dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if np.issubdtype(self._output_dtype, np.integer):
            y = self._output_quant.dequantize(y)  # type: ignore[union-attr]
        y = np.asarray(y, np.float32).reshape(len(y), -1)
        if y.shape[1] != self.spec.embedding_dim:
            raise EdgefaceError(
                f"{self.path}: the artifact returns {y.shape[1]} values per face, its spec says "
                f"embedding_dim={self.spec.embedding_dim}"
            )
        if not np.isfinite(y).all():  # a NaN embedding scores "no match" against everyone, silently
            raise EdgefaceError(
                f"{self.path}: the artifact returned NaN or infinite embedding values; the artifact or its "
                "spec (mean/std, quantization) is broken"
            )
        return y

    def _check_input_shape(self, shape: Sequence[Any]) -> None:
        h, w = self.spec.input_size
        c = self.spec.channels
        want = (c, h, w) if self.spec.layout == "NCHW" else (h, w, c)
        got = tuple(shape[1:])
        if len(got) != 3 or any(
            isinstance(g, int) and g > 0 and g != e for g, e in zip(got, want, strict=True)
        ):
            raise EdgefaceError(
                f"{self.path}: input shape {list(shape)} does not match the spec ({self.spec.layout} "
                f"{h}x{w}, expected [N, {', '.join(map(str, want))}])"
            )
        self._fixed_batch_one = shape[0] == 1

    def invoke(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        """One call of the runtime on the artifact's own input type and layout, raw output: what
        benchmark tools (onnxruntime_perf_test, benchmark_model) time."""
        raise NotImplementedError

    def operator_profile(self, batch: np.ndarray, runs: int) -> list[dict[str, Any]] | None:
        """Per-operator times over `runs` runs, or None where the runtime offers no profiler."""
        return None


class OnnxArtifact(Artifact):
    backend = "onnxruntime"

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path, self.num_threads = path, num_threads
        t0 = time.perf_counter()
        self._session = self._make_session(num_threads, profile=False)
        self.init_ms = (time.perf_counter() - t0) * 1e3
        embedded = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.spec = resolve_spec(path, embedded)
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self._input_name, self._output_name = inp.name, out.name
        self._input_dtype = _ort_dtype(inp.type)
        self._output_dtype = _ort_dtype(out.type)
        self._check_input_shape(inp.shape)
        with spec_errors(path):
            self._setup_quant(None, None)
        self._ort = ort

    def _make_session(self, num_threads: int | None, profile: bool, prefix: str = "") -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = prefix
        # Our QDQ graphs quantize every weight they mean to; a conv left float on purpose (a grouped conv
        # whose int8 ORT kernel is 6x slower than fp32, converters/onnx.grouped_convs) must stay float, and
        # ORT's WeightBiasQuantization pass would quantize it back into that kernel.
        opts.add_session_config_entry(ORT_KEEP_FLOAT[0], ORT_KEEP_FLOAT[1])
        try:
            return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EdgefaceError(f"cannot load ONNX artifact {self.path}: {str(e).splitlines()[0]}") from None

    def invoke(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: x})[0]

    def operator_profile(self, batch: np.ndarray, runs: int) -> list[dict[str, Any]] | None:
        """onnxruntime's own profiler (the same trace onnxruntime_perf_test -p writes), summed per op."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            session = self._make_session(self.num_threads, profile=True, prefix=os.path.join(tmp, "ort"))
            x = self._quantize_input(np.asarray(batch, np.float32))
            for _ in range(runs):
                session.run([self._output_name], {self._input_name: x})
            trace = json.loads(Path(session.end_profiling()).read_text())
        per_op: dict[str, dict[str, Any]] = {}
        for ev in trace:
            if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
                continue
            op = ev.get("args", {}).get("op_name", "?")
            row = per_op.setdefault(op, {"op": op, "count": 0, "total_ms": 0.0})
            row["count"] += 1
            row["total_ms"] += ev["dur"] / 1e3
        rows = sorted(per_op.values(), key=lambda r: -r["total_ms"])
        total = sum(r["total_ms"] for r in rows) or 1.0
        for r in rows:
            r["ms_per_run"] = r["total_ms"] / runs
            r["percent"] = 100.0 * r["total_ms"] / total
            r["count"] //= runs
        return rows


class TfliteArtifact(Artifact):
    backend = "litert"

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        self.path, self.num_threads = path, num_threads
        try:
            content = path.read_bytes()
        except OSError as e:
            raise EdgefaceError(f"cannot read {path}: {e.strerror}") from None
        try:
            embedded = tflite_metadata(content).get(METADATA_KEY)
        except (struct.error, IndexError, ValueError):  # UnicodeDecodeError is a ValueError
            raise EdgefaceError(f"{path}: not a valid TFLite flatbuffer") from None
        try:
            text = embedded.decode("utf-8") if embedded is not None else None
        except UnicodeDecodeError:
            raise EdgefaceError(f"{path}: its embedded spec is not UTF-8 text") from None
        self.spec = resolve_spec(path, text)
        interpreter_cls, self.backend = _tflite_interpreter()
        t0 = time.perf_counter()
        try:
            with native_quiet():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
                self._interp = interpreter_cls(model_content=content, num_threads=num_threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise EdgefaceError(f"cannot load TFLite artifact {path}: {str(e).splitlines()[0]}") from None
        self.init_ms = (time.perf_counter() - t0) * 1e3
        inp, out = self._interp.get_input_details()[0], self._interp.get_output_details()[0]
        self._in, self._out = inp, out
        self._input_dtype, self._output_dtype = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
        self._check_input_shape([int(v) for v in inp["shape"]])
        self._batch = int(inp["shape"][0])
        with spec_errors(path):
            self._setup_quant(_tflite_quant(inp, path), _tflite_quant(out, path))

    def invoke(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch:
            self._interp.resize_tensor_input(self._in["index"], list(x.shape))
            self._interp.allocate_tensors()
            self._batch = len(x)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        return self._interp.get_tensor(self._out["index"]).copy()

    def _check_input_shape(self, shape: Sequence[Any]) -> None:
        super()._check_input_shape(shape)
        # Resizing works only where the graph has a dynamic batch (shape_signature -1); litert-torch graphs
        # are static batch 1 and XNNPACK fails to reshape them, so those run one image at a time.
        signature = self._in.get("shape_signature", shape)
        self._fixed_batch_one = len(signature) > 0 and int(signature[0]) != -1 and int(shape[0]) == 1


def load_artifact(
    path: str | os.PathLike[str], num_threads: int | None = None, artifact: str | None = None
) -> Artifact:
    """Pick the runtime by extension; the spec comes from the artifact, else its sidecar JSON.

    `path` may be a pack (folder or archive, `edgeface.runtime.pack`): its default artifact, or the one
    named `artifact`, is loaded after its hashes are checked, and `Artifact.pack` then gives the pipeline
    the pack's detector. An artifact file inside a pack folder is checked the same way."""
    from edgeface.runtime.pack import resolve

    resolved = resolve(path, artifact)
    path = resolved.path
    if not path.is_file():
        raise EdgefaceError(f"artifact not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        loaded: Artifact = OnnxArtifact(path, num_threads)
    elif suffix == ".tflite":
        loaded = TfliteArtifact(path, num_threads)
    else:
        raise EdgefaceError(
            f"{path}: unknown artifact type '{suffix}' (expected one of {', '.join(SUFFIXES)}, or a pack)"
        )
    loaded.pack = resolved.pack
    return loaded


@contextmanager
def spec_errors(path: Path) -> Iterator[None]:
    """A spec or quantization block that parses but holds the wrong types (a zero_point of "abc", a scale
    that is a list) fails in numpy or a constructor: one line naming the artifact, never a traceback."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EdgefaceError(f"{path}: malformed spec or quantization parameters ({reason})") from None


def resolve_spec(path: Path, embedded: str | None) -> ModelSpec:
    with spec_errors(path):  # edgeface.spec validates every field; this catches what slips past as a type
        return _read_spec(path, embedded)


def _read_spec(path: Path, embedded: str | None) -> ModelSpec:
    if embedded is not None:
        return ModelSpec.from_json(embedded, source=f"{path} (embedded spec)")
    sidecar = spec_path_for(path)
    if sidecar.is_file():
        return read_spec_json(sidecar)
    raise EdgefaceError(
        f"artifact has no spec: {path} embeds no '{METADATA_KEY}' metadata and {sidecar.name} is missing"
    )


def artifact_embedder(
    artifact: Artifact, flip: bool = False, batch_size: int = 64, progress: str | None = None
) -> Embedder:
    """The same Embedder contract as `edgeface.eval.embed.torch_embedder`: paths -> (N, D), not normalised.

    With `flip`, an image's embedding is the sum of its own and its mirror's, as for torch models, so an
    artifact and its source model are measured identically.
    """
    from tqdm.auto import tqdm

    spec = artifact.spec

    def embed(paths: Sequence[Path]) -> np.ndarray:
        out: list[np.ndarray] = []
        bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
        for start in range(0, len(paths), batch_size):
            faces = [read_image(p) for p in paths[start : start + batch_size]]
            e = artifact.embed(faces)
            if flip:
                e = e + artifact.embed(faces, flip=True)
            out.append(e)
            bar.update(len(faces))
        bar.close()
        if not out:
            return np.zeros((0, spec.embedding_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    return embed


# --- helpers ---------------------------------------------------------------------------------------------
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


def _ort_dtype(name: str) -> np.dtype:
    if name not in _ORT_DTYPES:
        raise EdgefaceError(f"unsupported ONNX tensor type {name}")
    return np.dtype(_ORT_DTYPES[name])


def _tflite_quant(details: dict[str, Any], path: Path) -> TensorQuant | None:
    scale, zero = details.get("quantization", (0.0, 0))
    dtype = np.dtype(details["dtype"])
    if not scale or dtype not in (np.int8, np.uint8):
        return None
    return _check_quant(
        TensorQuant(scale=float(scale), zero_point=int(zero), dtype=dtype.name),
        f"{path}: tensor {details.get('name', '?')!r}",
    )


_QUANT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _check_quant(q: TensorQuant, where: str) -> TensorQuant:
    """A TFLite tensor's own quantization parameters (used when the spec has none) are numbers read from
    the file like the spec's (which edgeface.spec validates): finite scale > 0, an integer zero point inside
    the dtype's range. Anything else would quantize every input to one code, silently."""
    if q.dtype not in _QUANT_RANGE:
        raise EdgefaceError(f"{where}: dtype {q.dtype!r} is not int8 or uint8")
    scale, zero = q.scale, q.zero_point
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise EdgefaceError(f"{where}: scale {scale!r} is not a finite number > 0")
    lo, hi = _QUANT_RANGE[q.dtype]
    if isinstance(zero, bool) or not isinstance(zero, int | np.integer) or not lo <= int(zero) <= hi:
        raise EdgefaceError(f"{where}: zero_point {zero!r} is not an integer in [{lo}, {hi}] ({q.dtype})")
    return q


def _tflite_interpreter() -> tuple[Any, str]:
    """ai-edge-litert where it has a wheel, else tflite-runtime (older Pi images)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise EdgefaceError(
            "running .tflite artifacts needs ai-edge-litert (pip install ai-edge-litert) or tflite-runtime"
        ) from None


def tflite_metadata(buf: bytes) -> dict[str, bytes]:
    """Model.metadata entries (name -> buffer bytes) of a TFLite flatbuffer, read with struct alone.

    Reading four fields of the schema by hand avoids depending on TensorFlow or on a generated schema
    module that tflite-runtime does not ship. Field numbers come from tensorflow/lite/schema/schema.fbs:
    Model.buffers = 4, Model.metadata = 6; Metadata.name = 0, .buffer = 1; Buffer.data = 0, .offset = 1,
    .size = 2 (offset/size are used by models over 2 GB whose buffers live after the flatbuffer).
    """

    def u32(pos: int) -> int:
        return int(struct.unpack_from("<I", buf, pos)[0])

    def field(table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", buf, table)[0]
        vsize = struct.unpack_from("<H", buf, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vsize:
            return None
        off = struct.unpack_from("<H", buf, vtable + slot)[0]
        return table + off if off else None

    def deref(pos: int) -> int:
        return pos + u32(pos)

    def vector(pos: int) -> tuple[int, int]:
        start = deref(pos)
        return start + 4, u32(start)

    root = deref(0)
    meta_pos, buffers_pos = field(root, 6), field(root, 4)
    if meta_pos is None:
        return {}
    if buffers_pos is None:
        raise ValueError("metadata without buffers")
    buffers_start, n_buffers = vector(buffers_pos)
    meta_start, n_meta = vector(meta_pos)
    result: dict[str, bytes] = {}
    for i in range(n_meta):
        entry = deref(meta_start + 4 * i)
        name_pos, buf_pos = field(entry, 0), field(entry, 1)
        if name_pos is None or buf_pos is None:
            continue
        name_start, name_len = vector(name_pos)
        name = buf[name_start : name_start + name_len].decode("utf-8")
        index = u32(buf_pos)
        if index >= n_buffers:
            raise ValueError("metadata buffer index out of range")
        buffer = deref(buffers_start + 4 * index)
        data_pos = field(buffer, 0)
        if data_pos is not None:
            start, length = vector(data_pos)
            result[name] = bytes(buf[start : start + length])
        else:
            off_pos, size_pos = field(buffer, 1), field(buffer, 2)
            off = struct.unpack_from("<Q", buf, off_pos)[0] if off_pos else 0
            size = struct.unpack_from("<Q", buf, size_pos)[0] if size_pos else 0
            result[name] = bytes(buf[off : off + size])
    return result
