"""Design choices of the int8 ONNX graph, timed against each other on ONNX Runtime (batch 1, one thread).

Variants of one model built from the same float graph and calibration statistics:
  fp32              the float graph
  int8-uint8        uint8 activations, uint8 NCHW input/output (the session-1 artifact)
  int8-nhwc         the same with an NHWC input (onnx_layout.nhwc_input)
  int8-nhwc-s2d     and the space-to-depth stem (onnx_layout.stem_space_to_depth): what `edgeface export
                    --int8` ships
  int8-int8         uint8 replaced by int8 (s8s8) activations
  int8-float-stem   uint8, but the first (3-channel) conv kept float
  ort-quantize      onnxruntime.quantization.quantize_static (QDQ, per-channel, uint8) of the float graph
Interleaved rounds; speed-up = median of per-round ratios to fp32. Session time only (no numpy quantization).

    python benchmarks/onnx_variants.py --model mobilefacenet \
        --weights ../shared/models/mobilefacenet_ms1m.pt --calib ../shared/data/lfw
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from bench_timing import interleaved_ms, print_ort_variants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilefacenet")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort
    from edgeface.converters import onnx as oc
    from edgeface.converters import qdq
    from edgeface.converters.export import _batches, load_inputs, split_images
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeface.data.folders import compression_images
    from edgeface.models.loading import load_model

    loaded = load_model(args.model, args.weights)
    cal, _ = split_images(compression_images(args.calib), args.images, 8)
    x = load_inputs(cal, loaded.spec)
    base = oc.float_graph(loaded.model, loaded.spec)
    points = qdq.quant_points(base)
    stats = qdq.collect_stats(base, points, _batches(x))
    ranges = {p: stats.range(p, "mse", 8) for p in points}
    stem = next(n.name for n in base.graph.node if n.op_type == "Conv")
    from edgeface.converters.onnx_layout import nhwc_input, stem_space_to_depth

    variants: dict[str, tuple[onnx.ModelProto, object]] = {"fp32": (base, None)}
    for name, dtype, float_convs in (
        ("int8-uint8", "uint8", ()),
        ("int8-int8", "int8", ()),
        ("int8-float-stem", "uint8", (stem,)),
    ):
        proto, in_q, _ = qdq.build_qdq(
            base, qdq.activation_plan(base, ranges, 8, dtype), float_convs=float_convs
        )
        variants[name] = (proto, in_q)
        if name == "int8-uint8":
            for layout_name, s2d in (("int8-nhwc", False), ("int8-nhwc-s2d", True)):
                twin = onnx.ModelProto()
                twin.CopyFrom(proto)
                if s2d:
                    stem_space_to_depth(twin)
                variants[layout_name] = (nhwc_input(twin), in_q)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(base, str(src))
        feeds = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        class Reader(CalibrationDataReader):
            def get_next(self):  # noqa: ANN202
                return next(feeds, None)

        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        variants["ort-quantize"] = (onnx.load(str(dst)), None)

    sessions = {}
    for name, (proto, in_q) in variants.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = (
            x[:1]
            if in_q is None
            else np.clip(np.round(x[:1] / in_q.scale) + in_q.zero_point, in_q.qmin, in_q.qmax).astype(
                in_q.np_dtype
            )
        )
        if "nhwc" in name:
            feed = np.ascontiguousarray(feed.transpose(0, 2, 3, 1))
        sessions[name] = (sess, {sess.get_inputs()[0].name: feed})
    calls = {name: (lambda s=sess, f=feed: s.run(None, f)) for name, (sess, feed) in sessions.items()}
    times = interleaved_ms(calls, args.rounds, args.runs)
    print_ort_variants("onnx_variants.py", args.model, args.calib, times)


if __name__ == "__main__":
    main()
