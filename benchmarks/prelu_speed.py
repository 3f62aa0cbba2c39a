"""PReLU networks in int8 on ONNX Runtime: what the float PReLU costs and what replacing it buys.

ORT has no integer PReLU, so DQ -> PRelu -> Q stays float around every layer. Variants of one network
(random weights are enough for speed; accuracy of a substitution needs distillation, see docs/speed.md):
  fp32            the float graph
  int8-prelu      our QDQ graph, PReLU kept (float islands)
  int8-prelu-as-max  exact rewrite PReLU(x) = Max(x, a*x) on one uint8 grid (what `edgeface export` ships)
  int8-leaky      PReLU -> LeakyReLU(mean slope): ORT runs QLinearLeakyRelu, one integer pass
  int8-relu       PReLU -> ReLU: absorbed into the conv's requantization, no pass at all
Batch 1, one thread, interleaved rounds, median of per-round ratios to fp32.

    python benchmarks/prelu_speed.py --model mbf --calib ../shared/data/lfw
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_timing import interleaved_ms, print_ort_variants


def substitute(proto, kind: str):  # noqa: ANN001, ANN201
    """Replace every PRelu node with Relu or LeakyRelu(alpha = that layer's mean slope)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        if n.op_type == "PRelu":
            if kind == "relu":
                n = helper.make_node("Relu", [n.input[0]], list(n.output), name=n.name)
            else:
                alpha = float(np.clip(inits[n.input[1]].mean(), 0.0, 1.0))
                n = helper.make_node("LeakyRelu", [n.input[0]], list(n.output), name=n.name, alpha=alpha)
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mbf")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    import onnxruntime as ort
    from edgeface.converters import onnx as oc
    from edgeface.converters import qdq
    from edgeface.converters.export import _batches, load_inputs, split_images

    from edgeface.data.folders import compression_images
    from edgeface.models.loading import load_model

    loaded = load_model(args.model)
    cal, _ = split_images(compression_images(args.calib), args.images, 8)
    x_cal = load_inputs(cal, loaded.spec)
    base = oc.float_graph(loaded.model, loaded.spec)
    variants = {"fp32": (base, None)}
    from edgeface.converters.onnx_float import prelu_as_max

    for name, graph in (
        ("int8-prelu", base),
        ("int8-prelu-as-max", prelu_as_max(base)),
        ("int8-leaky", substitute(base, "leaky")),
        ("int8-relu", substitute(base, "relu")),
    ):
        points = qdq.quant_points(graph)
        stats = qdq.collect_stats(graph, points, _batches(x_cal))
        act = qdq.activation_plan(graph, {p: stats.range(p, "mse", 8) for p in points}, 8, "uint8")
        proto, in_q, _ = qdq.build_qdq(graph, act)
        variants[name] = (proto, in_q)
    sessions = {}
    for name, (proto, in_q) in variants.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = x_cal[:1] if in_q is None else in_q_quantize(x_cal[:1], in_q)
        sessions[name] = (sess, {sess.get_inputs()[0].name: x})
        optimized = ort.SessionOptions()
        optimized.log_severity_level = 3
    calls = {name: (lambda s=sess, f=feed: s.run(None, f)) for name, (sess, feed) in sessions.items()}
    times = interleaved_ms(calls, args.rounds, args.runs)
    print_ort_variants("prelu_speed.py", args.model, args.calib, times)


def in_q_quantize(x: np.ndarray, p) -> np.ndarray:  # noqa: ANN001
    return np.clip(np.round(x / p.scale) + p.zero_point, p.qmin, p.qmax).astype(p.np_dtype)


if __name__ == "__main__":
    main()
