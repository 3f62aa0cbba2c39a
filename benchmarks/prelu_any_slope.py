"""PReLU networks with trained-like slopes (drawn from [-4, 2.2]: many negative, some above 1) through
`edgeface export --precision fp32,int8 --format onnx,tflite`: parity, and int8 speed-up over fp32 in
ONNX Runtime and LiteRT (batch 1, one thread, interleaved rounds; by wall time and by the calling thread's
CPU time, which other jobs on a shared machine disturb far less).

In both formats every PReLU whose channels can be negated and rescaled in its neighbouring layers becomes
one max(x, a*x) on one grid, with the channels' ranges equalized (ONNX: onnx_float.prelu_as_max and
equalize.py on the graph; TFLite: torch_rewrite.prelu_as_max on the module); the others get the exact
a*x + (1 - a)*relu(x) form when a slope lies outside [0, 1]. The built-in models have random weights; the
slopes are set before export and saved as a checkpoint the CLI loads.

`--reference` also exports the same weights with the built-in initial slopes (0.25, where max(x, a*x)
needed no flip or equalization) and times them in the same interleaved rounds: on a shared machine the
int8 speed-up of a plain network moves with the load, and this row says how much of a shortfall is the
machine's.

    python benchmarks/prelu_any_slope.py --model mbf --out /tmp/bench/prelu_mbf
    python benchmarks/prelu_any_slope.py --model iresnet18 --out /tmp/bench/prelu_ir18
    python benchmarks/prelu_any_slope.py --model mbf --out /tmp/bench/prelu_mbf_onnx --format onnx
    python benchmarks/prelu_any_slope.py --model iresnet18 --out /tmp/bench/ir18 --format tflite --reference
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
FACE = LFW / "aligned112" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"


def checkpoint(model: str, path: Path, seed: int = 0, trained_like: bool = True) -> None:
    import torch

    from edgeface.models.loading import load_model

    torch.manual_seed(seed)
    net = load_model(model, None).model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.PReLU) and trained_like:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 6.2 - 4.0)
    torch.save(net.state_dict(), path)


def interleaved_wall_cpu(calls: dict, rounds: int, runs: int) -> dict:
    """{variant: ([wall ms per round], [CPU ms per round])}, variants interleaved within every round (as
    bench_timing.interleaved_ms). With one thread both runtimes run every kernel on the calling thread, so
    its CPU time (`time.thread_time`, as benchmarks/ort_cpu_time.py) measures the work of one call far less
    disturbed by other jobs than wall time is."""
    out: dict = {k: ([], []) for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            for _ in range(3):
                call()
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(runs):
                call()
            out[k][0].append((time.perf_counter() - w0) / runs * 1e3)
            out[k][1].append((time.thread_time() - c0) / runs * 1e3)
    return out


def export(model: str, weights: Path, out: Path, formats: str) -> None:
    """`edgeface export` fp32 and int8 of the checkpoint into `out`, its --json reports in report.json."""
    report = out / "report.json"
    cmd = ["edgeface", "export", "-m", model, "-w", str(weights), "--precision", "fp32,int8"]
    cmd += ["--format", formats, "--calib", str(LFW), "-o", str(out), "--json"]
    cmd += ["--calib-images", "64", "--parity-images", "16"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-2000:])
    report.write_text(done.stdout[done.stdout.index("[") :] if "[" in done.stdout else "[]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="built-in PReLU model: mbf or iresnet18")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--format", default="onnx,tflite", help="formats to export and time (onnx, tflite)")
    ap.add_argument(
        "--reference", action="store_true", help="also the built-in slopes (0.25), timed in the same rounds"
    )
    args = ap.parse_args()
    import cv2
    from edgeface.runtime.backends import load_artifact

    runs = {"trained-like slopes": args.out}
    if args.reference:
        runs["built-in slopes 0.25 (reference)"] = args.out / "reference"
    for kind, out in runs.items():
        out.mkdir(parents=True, exist_ok=True)
        weights = out / f"{args.model}_{'reference' if 'reference' in kind else 'trained_like'}_prelu.pt"
        if not args.skip_export:
            checkpoint(args.model, weights, trained_like="reference" not in kind)
            export(args.model, weights, out, args.format)
    face = cv2.imread(str(FACE))
    print(
        f"<!-- generated by: python benchmarks/prelu_any_slope.py --model {args.model} --out {args.out} "
        f"--rounds {args.rounds} --runs {args.runs} --format {args.format}"
        f"{' --reference' if args.reference else ''} -->"
    )
    print(f"CPU: {platform.machine()}, batch 1, one thread, {args.rounds} interleaved rounds.\n")
    print(
        "| runtime | PReLU slopes | fp32 ms | int8 ms | int8 speed-up | fp32 / int8 CPU ms | "
        "speed-up by CPU time | int8 parity mean / min |\n|---|---|---|---|---|---|---|---|"
    )
    for fmt in args.format.split(","):
        runtime = "onnxruntime" if fmt == "onnx" else "LiteRT (XNNPACK)"
        calls, rows = {}, []
        for kind, out in runs.items():
            paths = [out / f"{args.model}_{p}.{fmt}" for p in ("fp32", "int8")]
            if not all(p.is_file() for p in paths):
                missing = ", ".join(p.name for p in paths if not p.is_file())
                print(f"| {runtime} | {kind} | missing: {missing} | | | |")
                continue
            reports = {Path(r["path"]).name: r for r in json.loads((out / "report.json").read_text())}
            for p in ("fp32", "int8"):
                a = load_artifact(out / f"{args.model}_{p}.{fmt}", num_threads=1)
                calls[(kind, p)] = lambda a=a, x=a.native_input([face]): a.invoke(x)
            rows.append((kind, reports.get(paths[1].name, {}).get("parity", {})))
        if not calls:
            continue
        t = interleaved_wall_cpu(calls, args.rounds, args.runs)
        for kind, par in rows:
            (f32, f32_cpu), (i8, i8_cpu) = (tuple(map(np.array, t[(kind, p)])) for p in ("fp32", "int8"))
            print(
                f"| {runtime} | {kind} | {np.median(f32):.2f} | {np.median(i8):.2f} | "
                f"{np.median(f32 / i8):.2f}x | {np.median(f32_cpu):.2f} / {np.median(i8_cpu):.2f} | "
                f"{np.median(f32_cpu / i8_cpu):.2f}x | "
                f"{par.get('mean_cosine', float('nan')):.4f} / {par.get('min_cosine', float('nan')):.4f} |"
            )


if __name__ == "__main__":
    main()
