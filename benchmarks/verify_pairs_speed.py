"""Time per verified pair: one `edgeface verify A B` process per pair against one `edgeface verify --pairs`.

Both run the real CLI in fresh processes, as a user's script would. Pair lists:
- raw photos (raw_sample, through detection and landmark refinement), `disjoint`: every photo in exactly
  one pair, so batching saves only the process start and the model loads (the worst case for --pairs);
- raw photos, `all pairs`: every pair of N photos, so each photo is embedded once for N - 1 pairs;
- aligned crops (`--aligned`, LFW aligned112 of the raw_sample identities), `disjoint`.
Each is compared with one process per pair on the same kind of input (raw, or --aligned).

    python benchmarks/verify_pairs_speed.py --model /tmp/evalart/art/mobilefacenet_int8.onnx
    python benchmarks/verify_pairs_speed.py --model /tmp/evalart/art/mobilefacenet_int8.onnx --threads 2 \
        --landmarker face_landmark.tflite

Results go to docs/evaluation.md by hand, with the command and the machine's load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "raw_sample"


def cli(*args: str) -> float:
    """Wall seconds of one edgeface process."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgeface.cli.main", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgeface {' '.join(args)} failed: {r.stderr[-500:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--photos", type=int, default=60, help="raw photos used (all pairs: N(N-1)/2)")
    ap.add_argument("--single", type=int, default=8, help="pairs timed one process each, per input kind")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--landmarker", help="face-mesh model for both sides (edgeface verify --landmarker)")
    args = ap.parse_args()

    photos = sorted(RAW.rglob("*.jpg"))[: args.photos]
    aligned_root = RAW.parent / "aligned112"
    crops = [aligned_root / p.parent.name / p.name for p in photos]
    scenarios = [
        ("raw photos, disjoint", list(zip(photos[0::2], photos[1::2], strict=False)), []),
        ("raw photos, all pairs", list(itertools.combinations(photos, 2)), []),
        ("aligned crops, disjoint", list(zip(crops[0::2], crops[1::2], strict=False)), ["--aligned"]),
    ]
    common = ["--model", args.model, "--threads", args.threads]
    if args.landmarker:
        common += ["--landmarker", args.landmarker]
    per_process: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pairs, flags in scenarios:
            kind = " ".join(flags) or "raw"
            if kind not in per_process:
                t = [
                    cli("verify", str(a), str(b), *common, *flags, "--json") for a, b in pairs[: args.single]
                ]
                per_process[kind] = sum(t) / len(t)
            listing = Path(tmp) / f"{len(rows)}.tsv"
            listing.write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
            total = cli("verify", "--pairs", str(listing), *common, *flags)
            each = total / len(pairs)
            rows.append((name, len(pairs), per_process[kind], total, each))
    print(
        f"model {args.model}, threads {args.threads}, landmarker {args.landmarker}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| pair list | pairs | one process per pair, ms | --pairs total s | --pairs ms per pair | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, single, total, each in rows:
        print(
            f"| {name} | {n} | {single * 1e3:.0f} | {total:.1f} | {each * 1e3:.0f} | {single / each:.1f}x |"
        )


if __name__ == "__main__":
    main()
