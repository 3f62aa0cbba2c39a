"""Does ONNX Runtime compute our int8 graph exactly on this CPU? 8-bit vs 7-bit GEMM weights.

ORT's u8s8 GEMM on x86 without VNNI adds pairs of uint8 x int8 products in int16 (vpmaddubsw) and
saturates. This script builds the int8 ONNX of a model twice (GEMM convs with 8-bit weights, and with the
7-bit grid edgeface ships, converters/onnx.gemm_safe_weights) and runs each with ORT's integer kernels
and with graph optimisations off (the QDQ graph then runs as DQ -> float op -> Q: the integers it should
compute). Cosine to the PyTorch model on held-out compression-split faces:

    python benchmarks/ort_saturation.py [--model mobilefacenet --weights ../shared/models/...pt]

Results: docs/speed.md ("Integer kernels and saturation").
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _cpu() -> str:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line)
        flags = next(line for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return f"{name} ({'VNNI' if vnni else 'no VNNI'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilefacenet")
    ap.add_argument("--weights", default=str(SHARED / "models" / "mobilefacenet_ms1m.pt"))
    ap.add_argument("--lfw", default=str(SHARED / "data" / "lfw"))
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from edgeface.converters import onnx as onnx_conv
    from edgeface.converters import qdq
    from edgeface.converters.export import load_inputs
    from edgeface.converters.onnx_float import prelu_as_max

    from edgeface.data.lfw import compression_split
    from edgeface.models.loading import load_model

    loaded = load_model(args.model, args.weights)
    paths = compression_split(args.lfw)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(paths))
    cal = load_inputs([paths[i] for i in order[:256]], loaded.spec)
    hold = load_inputs([paths[i] for i in order[256 : 256 + args.images]], loaded.spec)
    with torch.no_grad():
        ref = loaded.model(torch.from_numpy(hold)).numpy()
    float_proto = onnx_conv.float_graph(loaded.model, loaded.spec)
    graph = prelu_as_max(float_proto)
    stats = qdq.collect_stats(
        graph, qdq.quant_points(graph), [cal[i : i + 32] for i in range(0, len(cal), 32)]
    )

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return (a * (b / np.linalg.norm(b, axis=1, keepdims=True))).sum(1)

    print(f"CPU: {_cpu()}, onnxruntime {ort.__version__}, {args.model}, {len(hold)} held-out faces")
    print(f"{'GEMM weights':<14}{'ORT kernels (mean / min)':<28}{'QDQ simulated (mean / min)':<28}")
    original = onnx_conv.gemm_safe_weights
    for label, patch in (("8-bit", True), ("7-bit", False)):
        if patch:
            onnx_conv.gemm_safe_weights = lambda p, b, s, lb: (dict(s or {}), dict(lb or {}))  # type: ignore
        try:
            build = onnx_conv.build_onnx(float_proto, loaded.spec.replace(layout="NCHW"), "int8", stats)
        finally:
            onnx_conv.gemm_safe_weights = original
        spec = build.spec
        x = np.ascontiguousarray(hold.transpose(0, 2, 3, 1))  # integer artifacts take NHWC
        xq = spec.input_quant.quantize(x) if spec.input_quant else x
        row = []
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(
                build.proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
            )
            name = sess.get_inputs()[0].name
            out = np.concatenate([sess.run(None, {name: xq[i : i + 1]})[0] for i in range(len(xq))])
            emb = spec.output_quant.dequantize(out) if spec.output_quant else out
            c = cosine(emb, ref)
            row.append(f"{c.mean():.4f} / {c.min():.4f}")
        print(f"{label:<14}{row[0]:<28}{row[1]:<28}")


if __name__ == "__main__":
    main()
