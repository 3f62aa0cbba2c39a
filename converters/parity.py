"""Parity of an artifact with the PyTorch model it came from, and where the drift comes from.

Parity is cosine similarity of embeddings of held-out images (never the calibration images, which the
quantizer has already fitted). When the mean is too low, `onnx_layer_drift` compares every quantized tensor of
a QDQ graph with the same tensor of the float graph and names the layer where the cosine drops most, which is
the layer to give more bits, a better range or a QAT pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Parity:
    mean_cosine: float
    min_cosine: float
    images: int
    drift_layer: str | None = None
    drift_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_cosine": round(self.mean_cosine, 6),
            "min_cosine": round(self.min_cosine, 6),
            "images": self.images,
            "drift_layer": self.drift_layer,
            "drift_cosine": None if self.drift_cosine is None else round(self.drift_cosine, 6),
        }


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / den


def parity(artifact_embeddings: np.ndarray, reference_embeddings: np.ndarray) -> Parity:
    c = cosine_rows(artifact_embeddings, reference_embeddings)
    return Parity(float(c.mean()), float(c.min()), len(c))


def onnx_layer_drift(
    float_proto: Any, qdq_proto: Any, points: Sequence[str], x: np.ndarray, input_quant: Any = None
) -> tuple[str, float] | None:
    """The quant point whose cosine to the float graph falls most below that of the point before it.

    Every quant point is a tensor name shared by both graphs (the QDQ graph exposes its dequantized copy as
    `<name>_dq0`). Returns (node name, cosine at that point) or None when nothing could be compared.
    """
    import onnx
    import onnxruntime as ort

    def onnx_session(data: bytes) -> Any:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def with_outputs(proto: Any, names: Sequence[str]) -> Any:
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        del m.graph.output[:]
        for n in names:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
        return m

    qdq_names = {n.output[0] for n in qdq_proto.graph.node}
    pairs = [(p, f"{p}_dq0") for p in points if f"{p}_dq0" in qdq_names]
    if not pairs:
        return None
    fsess = onnx_session(with_outputs(float_proto, [p for p, _ in pairs]).SerializeToString())
    qsess = onnx_session(with_outputs(qdq_proto, [q for _, q in pairs]).SerializeToString())
    from edgeface.converters.qdq import run_batched

    f_out = run_batched(fsess, x)[0]
    q_in = input_quant.quantize(x) if input_quant is not None else x
    q_out = run_batched(qsess, q_in)[0]
    producers = {o: n.name for n in float_proto.graph.node for o in n.output}
    best: tuple[str, float] | None = None
    worst_drop, prev = -1.0, 1.0
    for (name, _), fv, qv in zip(pairs, f_out, q_out, strict=True):
        c = float(cosine_rows(fv, qv).mean())
        drop = prev - c
        if drop > worst_drop:
            worst_drop, best = drop, (producers.get(name, name), c)
        prev = c
    return best
