"""Mixed precision by measurement: find the activation tensors that int8 cannot carry.

A CNN-transformer hybrid (EdgeNeXt, ConvNeXt-style blocks) has a residual stream whose few outlier channels
take most of a per-tensor grid: quantized alone, such a tensor drops the embedding's cosine to fp32 from 1.0
to 0.5-0.9 (EdgeFace-XS, docs/export_hybrid.md), while every other tensor of the same network stays above
0.998. Those tensors stay float; whatever reads them runs in float too (plan_graph's `float_tensors`).

The measurement is one ONNX session: every candidate tensor p is replaced by p + f_p * (QDQ(p) - p), where
f_p is a scalar graph input. All f = 0 is the float graph, all f = 1 the fully fake-quantized one, and a
one-hot f quantizes one tensor alone. The full pass runs first; when it already keeps the cosine above
`trigger` nothing is measured further (plain CNNs take this exit), else each candidate alone. `select` is
the backend-free part, which the TFLite export shares (tflite_mixed.py) with a measured rather than
predicted number of tensors kept float.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from edgeface.converters.qdq import QParams

SENSITIVITY_IMAGES = 8  # calibration images for the per-tensor pass, ONNX (export.py) and TFLite (tflite.py)


def _flagged_graph(proto: Any, act: Mapping[str, QParams], points: Sequence[str]) -> Any:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    nodes = list(g.node)
    extra, flags = [], []
    for k, p in enumerate(points):
        q = act[p]
        tag = f"fq{k}"
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(q.scale, np.float32), f"{tag}_s"),
                numpy_helper.from_array(np.array(q.zero_point, q.np_dtype), f"{tag}_z"),
            ]
        )
        flags.append(helper.make_tensor_value_info(f"{tag}_f", TensorProto.FLOAT, [1]))
        for n in nodes:
            n.input[:] = [f"{tag}_out" if i == p else i for i in n.input]
        extra.append(
            (
                p,
                [
                    helper.make_node("QuantizeLinear", [p, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"]),
                    helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [f"{tag}_dq"]),
                    helper.make_node("Sub", [f"{tag}_dq", p], [f"{tag}_d"]),
                    helper.make_node("Mul", [f"{tag}_d", f"{tag}_f"], [f"{tag}_fd"]),
                    helper.make_node("Add", [p, f"{tag}_fd"], [f"{tag}_out"]),
                ],
            )
        )
    # insert each block right after the producer of its tensor (the graph input's first)
    order = []
    pending = {p: blk for p, blk in extra}
    inp = g.input[0].name
    if inp in pending:
        order.extend(pending.pop(inp))
    for n in nodes:
        order.append(n)
        for o in n.output:
            if o in pending:
                order.extend(pending.pop(o))
    del g.node[:]
    g.node.extend(order)
    g.input.extend(flags)
    return m


def fragile_tensors(
    proto: Any,
    act: Mapping[str, QParams],
    points: Sequence[str],
    x: np.ndarray,
    target: float = 0.996,
    trigger: float = 0.99,
) -> tuple[list[tuple[str, float]], float]:
    """([(tensor, cosine when quantized alone)] to keep float, cosine of the full fake-quantized pass).

    Empty when fake-quantizing every point keeps the mean cosine to the float graph >= `trigger` (the
    export's default parity bar: plain CNNs such as MobileFaceNet, 0.993, stay fully integer). Else the
    tensors are taken worst first until the drops (1 - cosine) of those left quantized add up to at most
    1 - target: drops this small add up nearly linearly (EdgeFace-XS: predicted 0.961, measured 0.969).
    """
    import onnxruntime as ort

    cand = [p for p in points if p in act and p != proto.graph.input[0].name]
    if not cand:
        return [], 1.0
    m = _flagged_graph(proto, act, cand)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    out = sess.get_outputs()[0].name

    def run(on: set[int]) -> np.ndarray:
        feeds = {f"fq{k}_f": np.array([1.0 if k in on else 0.0], np.float32) for k in range(len(cand))}
        if sess.get_inputs()[0].shape[0] == 1:
            return np.concatenate([sess.run([out], {inp: x[i : i + 1], **feeds})[0] for i in range(len(x))])
        return sess.run([out], {inp: x, **feeds})[0]

    return select(run, cand, target, trigger)


def select(
    run: Callable[[set[int]], np.ndarray],
    cand: Sequence[str],
    target: float = 0.996,
    trigger: float = 0.99,
    scan: Callable[[Sequence[int]], set[int]] | None = None,
) -> tuple[list[tuple[str, float]], float]:
    """The measurement and choice of `fragile_tensors` for any backend: `run(on)` embeds the images with the
    candidates whose indices are in `on` quantized and the others float (TFLite: tflite_mixed.py).

    With `scan`, the number kept float is measured rather than predicted: the shortest worst-first prefix
    whose float keeping brings the pass with every other candidate quantized to `target`; `scan(prefix)`
    says which candidates end up float when that prefix is kept float (where many
    tensors each drop a little, TFLite's decomposed LayerNorms, the sum of their drops overstates the
    loss; where quantizing one tensor alone is harmless but not together with its neighbours, the sum
    understates it)."""
    from edgeface.converters.parity import cosine_rows

    def cos(on: set[int]) -> float:
        return float(np.nan_to_num(cosine_rows(run(on), ref), nan=-1.0).mean())  # inf/nan: the worst

    ref = run(set())
    full = cos(set(range(len(cand))))
    if full >= trigger:
        return [], full
    alone = sorted(((k, cos({k})) for k in range(len(cand))), key=lambda r: r[1])
    if scan is not None:
        everything = set(range(len(cand)))
        for n in range(len(alone) + 1):
            if cos(everything - scan([k for k, _ in alone[:n]])) >= target:
                break
        return [(cand[k], c) for k, c in alone[:n]], full
    budget = 1.0 - target
    left = sum(1.0 - c for _, c in alone)
    chosen = []
    for k, c in alone:
        if left <= budget:
            break
        chosen.append((cand[k], c))
        left -= 1.0 - c
    return chosen, full
