"""TFLite int8 / w6a6 artifacts against the fp32 PyTorch model: cosine, XNNPACK partitions, 6-bit holding.

For each artifact: mean / min cosine of its embeddings to the fp32 model's on held-out compression-split
images (the export's own parity is against the model it exported, which for a quantized checkpoint is the
fake-quant model), the number of XNNPACK partitions, the operators left outside them, a rough single-thread
latency (noisy on a shared machine; docs/speed.md has the real benchmark) and, for w6a6, the grid clamps.
The 64-code holding itself is asserted by tests/test_export_tflite_w6a6.py.
Commands for docs/export.md, "TFLite: learned scales and w6a6" (all of them are listed there):

    edgeface quantize -m mobilefacenet -w ../shared/models/mobilefacenet_ms1m.pt --calib ../shared/data/lfw \
        --num-images 128 -o /tmp/mfn_w8a8.pt                         # and --bits w6a6 -o /tmp/mfn_w6a6.pt
    edgeface export -m mobilefacenet -w /tmp/mfn_w8a8.pt --int8 --format tflite --calib ../shared/data/lfw \
        -o /tmp/exp8 --min-cosine 0.5 --json
    python benchmarks/tflite_w6a6_check.py /tmp/exp8/mobilefacenet_int8.tflite ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--model", default="mobilefacenet")
    ap.add_argument("--weights", default=str(SHARED / "models" / "mobilefacenet_ms1m.pt"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument(
        "--plan", type=Path, help="`edgeface quantize --plan` JSON: compare the first artifact's scales"
    )
    args = ap.parse_args()
    if args.plan:
        compare_plan(args.artifacts[0], args.plan)

    import torch
    from ai_edge_litert.interpreter import Interpreter
    from edgeface.converters import tflite_learned as tl
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.preprocess import normalize, read_image

    from edgeface.data.folders import compression_images
    from edgeface.models.loading import load_model

    loaded = load_model(args.model, args.weights)
    paths = compression_images(SHARED / "data" / "lfw")
    paths = [paths[i] for i in np.random.default_rng(1).permutation(len(paths))[: args.images]]
    faces = [read_image(p) for p in paths]
    x = normalize(faces, loaded.spec.replace(layout="NCHW"))
    with torch.inference_mode():
        ref = loaded.model(torch.from_numpy(x)).numpy()
    for path in args.artifacts:
        art = load_artifact(path, num_threads=1)
        xs = normalize(faces, art.spec)
        emb = np.concatenate([art.run(xs[i : i + 1]) for i in range(len(xs))])
        cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
        data = path.read_bytes()
        interp = Interpreter(model_content=data, num_threads=1)
        interp.allocate_tensors()
        ops = interp._get_ops_details()
        delegated = {int(i) for o in ops if o["op_name"] == "DELEGATE" for i in o["outputs"]}
        parts = sum(o["op_name"] == "DELEGATE" for o in ops)
        outside = sorted({o["op_name"] for o in ops if o["op_name"] != "DELEGATE"} - _inside(ops, delegated))
        one = xs[:1]
        art.run(one)
        t0 = time.perf_counter()
        for _ in range(20):
            art.run(one)
        ms = (time.perf_counter() - t0) / 20 * 1000
        line = (
            f"{path.name}: {path.stat().st_size} bytes, cosine to fp32 mean {cos.mean():.4f} "
            f"min {cos.min():.4f} ({len(cos)} images), XNNPACK partitions {parts}, "
            f"outside: {outside or 'none'}, {ms:.1f} ms/img"
        )
        model = tl.read(data)
        graph = model.subgraphs[0]
        names = [tl.tensor_name(graph.tensors[op.outputs[0]]) for op in graph.operators]
        clamps = [n for n in names if n.endswith("/grid6")]
        if clamps:
            line += f", {len(clamps)} grid clamps"
        print(line, flush=True)


def compare_plan(artifact: Path, plan_path: Path) -> None:
    """How many of the checkpoint's per-channel weight scales and activation scales / zero points the TFLite
    file carries unchanged (weighted ops in order, as tflite_learned matches them)."""
    import json

    from edgeface.converters import tflite_learned as tl

    plan = json.loads(plan_path.read_text())
    model = tl.read(artifact.read_bytes())
    graph = model.subgraphs[0]
    main, _ = tl.weighted_ops(model)
    layers = list(plan["layers"].values())
    w_ok = a_ok = a_n = 0
    for k, layer in zip(main, layers, strict=True):
        op = graph.operators[k]
        ws = np.asarray(graph.tensors[op.inputs[1]].quantization.scale)
        w_ok += bool(np.allclose(ws, layer["weight_scale"], rtol=1e-6))
        if layer["output"] is not None:
            a_n += 1
            q = graph.tensors[op.outputs[0]].quantization
            a_ok += bool(
                np.isclose(q.scale[0], layer["output"]["scale"], rtol=1e-6)
                and int(q.zeroPoint[0]) == layer["output"]["zero_point"]
            )
    print(
        f"{artifact.name} vs {plan_path.name}: weight scales equal on {w_ok}/{len(layers)} layers, "
        f"output activation scale+zero point equal on {a_ok}/{a_n}",
        flush=True,
    )


def _inside(ops: list, delegated: set[int]) -> set[str]:
    """Operator kinds whose every instance's outputs are produced inside a delegate partition (interior
    tensors of a partition are not listed; an op counts as inside when its output is not read by any op
    that runs outside)."""
    outside_reads = {int(i) for o in ops if o["op_name"] == "DELEGATE" for i in o["inputs"]}
    kinds: dict[str, bool] = {}
    for o in ops:
        if o["op_name"] == "DELEGATE":
            continue
        ok = all(int(i) not in outside_reads or int(i) in delegated for i in o["outputs"])
        kinds[o["op_name"]] = kinds.get(o["op_name"], True) and ok
    return {k for k, v in kinds.items() if v}


if __name__ == "__main__":
    main()
