"""Latency of exported artifacts: fp32 vs int8 vs w6a6, ONNX Runtime and LiteRT, batch 1, one thread.

Two numbers per artifact, both through edgeface.runtime with intra-op threads = 1 (ORT) and num_threads = 1
(LiteRT, XNNPACK on by default):
- "invoke": one runtime call on the artifact's own input type (float, or the uint8/int8 codes of a quantized
  artifact), what onnxruntime_perf_test or LiteRT's benchmark_model time;
- "embed": an aligned uint8 face crop to a float embedding (`Artifact.embed`: preprocessing, the call, output
  dequantization), what the device pipeline spends per face.
Runs are interleaved (every artifact once per round, rounds repeated) so that load from other processes hits
all of them alike, and a speed-up is the median over rounds of the per-round ratio to the fp32 artifact of
the same runtime.

    python benchmarks/export_speed.py --dir /tmp/edgeface-artifacts --model mobilefacenet \
        --out docs/speed_results.md
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
from bench_timing import interleaved_ms
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.preprocess import read_image

FACE = "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"


def bench(paths: list[Path], crop: np.ndarray, rounds: int, runs: int) -> dict[tuple[Path, str], list[float]]:
    arts = {p: load_artifact(p, num_threads=1) for p in paths}
    calls = {}
    for p, a in arts.items():
        native = a.native_input([crop])
        calls[(p, "invoke")] = lambda a=a, x=native: a.invoke(x)
        calls[(p, "embed")] = lambda a=a: a.embed([crop])
    return interleaved_ms(calls, rounds, runs)


def ort_quantize(fp32: Path, calib: Path) -> Path:
    """ORT's own static quantizer on our fp32 artifact: the baseline the int8 artifact has to beat."""
    from edgeface.converters.export import load_inputs, split_images
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeface.data.folders import compression_images
    from edgeface.spec import read_spec_json, spec_path_for, write_spec_json

    spec = read_spec_json(spec_path_for(fp32))
    cal, _ = split_images(compression_images(calib), 128, 8)
    x = load_inputs(cal, spec)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    out = fp32.with_name(fp32.name.replace("_fp32.onnx", "_ortqs.onnx"))
    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    write_spec_json(spec, spec_path_for(out))  # float in/out, like the fp32 artifact
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="folder with <model>_<precision>.<onnx|tflite>")
    ap.add_argument("--model", required=True, help="artifact name prefix (the spec name), e.g. mobilefacenet")
    ap.add_argument(
        "--face",
        type=Path,
        default=Path(__file__).resolve().parents[2]
        / "shared/data/lfw/aligned112/Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
        help="an aligned face crop (default: one LFW image from ../shared)",
    )
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write the table to")
    ap.add_argument(
        "--ort-baseline",
        type=Path,
        default=None,
        metavar="CALIB",
        help="also time onnxruntime.quantization.quantize_static (QDQ, per-channel, uint8 "
        "activations) of the fp32 ONNX artifact, calibrated on 128 images of CALIB",
    )
    args = ap.parse_args()
    if args.ort_baseline:
        ort_quantize(args.dir / f"{args.model}_fp32.onnx", args.ort_baseline)

    crop = read_image(args.face)
    rows = []
    for fmt, runtime in (("onnx", "onnxruntime"), ("tflite", "LiteRT (XNNPACK)")):
        paths = [args.dir / f"{args.model}_{p}.{fmt}" for p in ("fp32", "int8", "w6a6", "ortqs")]
        paths = [p for p in paths if p.is_file()]
        if not paths or not paths[0].name.endswith(f"_fp32.{fmt}"):
            continue
        times = bench(paths, crop, args.rounds, args.runs)
        row = []
        for p in paths:
            row = [runtime, p.name, f"{p.stat().st_size / 1e6:.2f}"]
            for kind in ("invoke", "embed"):
                t, base = np.array(times[(p, kind)]), np.array(times[(paths[0], kind)])
                row += [f"{np.median(t):.2f}", f"{np.median(base / t):.2f}x"]
            rows.append(row)
    lines = [
        "| runtime | artifact | size MB | invoke ms | invoke speed-up | embed ms (crop -> embedding) "
        "| embed speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    head = (
        f"<!-- generated by: python benchmarks/export_speed.py --dir {args.dir} --model {args.model} "
        f"--rounds {args.rounds} --runs {args.runs}"
        + (f" --face {args.face}" if args.face != ap.get_default("face") else "")
        + (f" --ort-baseline {args.ort_baseline}" if args.ort_baseline else "")
        + (f" --out {args.out}" if args.out else "")
        + " -->\n"
        f"CPU: {platform.processor() or platform.machine()}, "
        f"{args.rounds} interleaved rounds x {args.runs} runs; "
        "speed-up = median of per-round ratios.\n\n"
    )
    text = head + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
