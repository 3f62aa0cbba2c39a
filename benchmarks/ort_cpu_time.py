"""ONNX artifacts side by side: per-call CPU time in ONNX Runtime and agreement with the first artifact.

Wall-clock timing is meaningless on a shared machine with other jobs running; with one intra-op thread ORT
runs every kernel on the calling thread, so that thread's CPU time (`time.thread_time`) measures the work of
one inference, far less disturbed by load (cache and memory-bandwidth contention still count). Artifacts are
timed round-robin, `--rounds` x `--runs` calls each, median reported.

    python benchmarks/ort_cpu_time.py /tmp/gd/mbf/mbf_fp32.onnx /tmp/eq/after_mbf/mbf_int8.onnx \\
        /tmp/gd/mbf/mbf_int8.onnx

Agreement: cosine of each artifact's embeddings to the first's on the last `--images` compression-split
faces (the export calibrates on the first ones), through edgeface.runtime.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from edgeface.runtime.backends import ORT_KEEP_FLOAT, load_artifact

from edgeface.data.lfw import compression_split

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def one_call(path: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry(*ORT_KEEP_FLOAT)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, shape).astype(np.uint8) if "uint8" in inp.type else rng.random(shape, np.float32)
    return lambda: sess.run(None, {inp.name: x})


def embeddings(path: Path, crops: list[np.ndarray]) -> np.ndarray:
    art = load_artifact(path)
    e = np.concatenate([art.embed(crops[i : i + 32]) for i in range(0, len(crops), 32)])
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()

    calls = {p: one_call(p) for p in args.artifacts}
    times: dict[Path, list[float]] = {p: [] for p in calls}
    for _ in range(args.rounds):
        for p, call in calls.items():
            for _ in range(3):
                call()
            t0 = time.thread_time()
            for _ in range(args.runs):
                call()
            times[p].append((time.thread_time() - t0) / args.runs * 1e3)
    crops = [cv2.imread(str(p)) for p in compression_split(LFW)[-args.images :]]
    ref = embeddings(args.artifacts[0], crops)
    base = float(np.median(times[args.artifacts[0]]))
    print(
        f"ORT one thread, CPU time of the calling thread per call, median of {args.rounds} rounds of "
        f"{args.runs}; cosine to {args.artifacts[0].name} on {len(crops)} compression-split faces.\n"
    )
    print("| artifact | CPU ms | vs first | mean cosine | min cosine |\n|---|---:|---:|---:|---:|")
    for p in args.artifacts:
        c = (embeddings(p, crops) * ref).sum(1)
        ms = float(np.median(times[p]))
        print(f"| {p} | {ms:.2f} | {base / ms:.2f}x | {c.mean():.4f} | {c.min():.4f} |")


if __name__ == "__main__":
    main()
