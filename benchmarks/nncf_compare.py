"""Our int8 ONNX against NNCF post-training quantization of the same fp32 ONNX (the strongest existing int8
PTQ for CNN-transformer hybrids that was measured here).

NNCF is not a dependency of edgeface: it runs in a separate venv that holds only nncf, onnx, onnxruntime
and numpy (it pulls no torch), and this script calls it there on data prepared by the project's own
preprocessing. Three steps, one command:

    python3 -m venv .venv-nncf && .venv-nncf/bin/pip install nncf==3.4.0 onnx==1.23.2 onnxruntime==1.31.1
    PYTHONPATH=../shared/models/edgeface_xs edgeface export --model edgeface_xs:edgeface_xs \
        --weights ../shared/models/edgeface_xs/edgeface_xs.pt --precision fp32,int8 --format onnx \
        --calib ../shared/data/lfw -o /tmp/xs
    PYTHONPATH=../shared/models/edgeface_xs python benchmarks/nncf_compare.py --dir /tmp/xs \
        --model edgeface_xs:edgeface_xs --weights ../shared/models/edgeface_xs/edgeface_xs.pt \
        --nncf-python .venv-nncf/bin/python [--lfw] --out docs/export_hybrid_nncf.md

NNCF: `nncf.quantize(model_type=TRANSFORMER)`, ONNX backend, 256 calibration images from the compression
split (the same images `edgeface export` calibrates on). Metrics: cosine to the PyTorch fp32 model on the
128 held-out compression-split images the export's parity check uses, and (with --lfw) LFW folds 6-10
with flip, every artifact through edgeface.runtime (ONNX Runtime, one thread).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"

NNCF_STEP = """
import sys, numpy as np, onnx, nncf
src, data, dst = sys.argv[1:4]
model = onnx.load(src)
x = np.load(data)["cal"]
name = model.graph.input[0].name
ds = nncf.Dataset(list(x), lambda a: {name: a[None].astype(np.float32)})
q = nncf.quantize(model, ds, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(x))
onnx.save(q, dst)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dir", type=Path, required=True, help="folder with <name>_fp32.onnx and <name>_int8.onnx"
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--nncf-python", required=True, help="python of a venv with nncf installed")
    ap.add_argument("--calib", type=Path, default=LFW)
    ap.add_argument("--lfw", action="store_true", help="also LFW folds 6-10 with flip (slow)")
    ap.add_argument("--reuse", action="store_true", help="keep an existing <name>_nncf.onnx")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (batch 1, one thread)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from edgeface.converters.export import load_inputs, split_images
    from edgeface.converters.parity import cosine_rows
    from edgeface.runtime.backends import artifact_embedder, load_artifact

    from edgeface.data.folders import compression_images
    from edgeface.models.loading import load_model
    from edgeface.spec import read_spec_json, spec_path_for, write_spec_json

    loaded = load_model(args.model, args.weights)
    name = loaded.spec.name
    fp32, ours = args.dir / f"{name}_fp32.onnx", args.dir / f"{name}_int8.onnx"
    nncf_path = args.dir / f"{name}_nncf.onnx"
    cal, hold = split_images(compression_images(args.calib), 256, 128)  # the export's own split
    x_cal, x_hold = load_inputs(cal, loaded.spec), load_inputs(hold, loaded.spec)
    if not (args.reuse and nncf_path.is_file()):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "cal.npz"
            np.savez(data, cal=x_cal)
            cmd = [args.nncf_python, "-c", NNCF_STEP, str(fp32), str(data), str(nncf_path)]
            subprocess.run(cmd, check=True)
    write_spec_json(read_spec_json(spec_path_for(fp32)), spec_path_for(nncf_path))  # float in/out

    with torch.inference_mode():
        ref = loaded.model(torch.from_numpy(x_hold)).numpy()
    import cv2
    from bench_timing import interleaved_ms

    rows = []
    paths = {"fp32 (ours)": fp32, "int8 (ours)": ours, "int8 NNCF TRANSFORMER": nncf_path}
    arts = {k: load_artifact(p, num_threads=1) for k, p in paths.items()}
    face = cv2.imread(str(LFW / "aligned112" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"))
    calls = {k: (lambda a=a, x=a.native_input([face]): a.invoke(x)) for k, a in arts.items()}
    times = interleaved_ms(calls, args.rounds, 5)
    base = np.array(times["fp32 (ours)"])
    for label, path in paths.items():
        art = arts[label]
        x = x_hold if art.spec.layout == "NCHW" else np.ascontiguousarray(x_hold.transpose(0, 2, 3, 1))
        c = cosine_rows(art.run(x), ref)
        speed = np.median(base / np.array(times[label]))
        row = [
            label,
            path.name,
            f"{c.mean():.4f}",
            f"{c.min():.4f}",
            f"{np.median(times[label]):.1f}",
            f"{speed:.2f}x",
        ]
        if args.lfw:
            from edgeface.eval.lfw_eval import evaluate_lfw

            r = evaluate_lfw(artifact_embedder(art, flip=True), LFW / "pairs.txt", LFW / "aligned112")
            row.append(f"{100 * r.acc:.2f}")
        rows.append(row)
    head = "| artifact | file | mean cosine to fp32 | min cosine | ORT ms | vs fp32 |" + (
        " LFW 6-10 flip (%) |" if args.lfw else ""
    )
    lines = [
        f"<!-- generated by: python benchmarks/nncf_compare.py --dir {args.dir} --model {args.model} "
        f"--weights {args.weights}{' --lfw' if args.lfw else ''} -->",
        head,
        "|" + "---|" * (7 if args.lfw else 6),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
