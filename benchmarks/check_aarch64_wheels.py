"""Do the runtime's pinned dependencies have wheels for a 64-bit Raspberry Pi (Linux aarch64)?

Asks PyPI through pip itself (`pip download --only-binary=:all: --platform ... --no-deps`), so it needs the
network and is a script, not a CI test. Checks each requirement for each Python version Raspberry Pi OS
ships (Bookworm: 3.11; Trixie: 3.13; glibc 2.36 assumed for both), including both TFLite runtimes.

    python benchmarks/check_aarch64_wheels.py [--python 3.11 3.13] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

# The base (runtime-only) install from pyproject.toml, pinned to what this repo is tested with.
RUNTIME = ["numpy==2.4.6", "opencv-python-headless==4.14.0.94", "onnxruntime==1.31.1"]
TFLITE = ["ai-edge-litert==2.3.0", "tflite-runtime==2.14.0"]
# pip does not widen a --platform tag to older manylinux versions, so list every tag a Pi can install:
# Raspberry Pi OS Bookworm has glibc 2.36 (Trixie 2.41), so manylinux_2_17 ... manylinux_2_36 all run there.
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in range(17, 37)]


def has_wheel(requirement: str, python: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--no-deps",
            "--dest",
            tmp,
            "--python-version",
            python,
            "--implementation",
            "cp",
        ]
        for p in PLATFORMS:
            cmd += ["--platform", p]
        r = subprocess.run([*cmd, requirement], capture_output=True, text=True)
        if r.returncode == 0:
            import os

            return True, ", ".join(sorted(os.listdir(tmp)))
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, last


def main() -> int:
    ap = argparse.ArgumentParser(description="aarch64 wheel check for the runtime dependencies")
    ap.add_argument("--python", nargs="+", default=["3.11", "3.13"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for py in a.python:
        for req in RUNTIME + TFLITE:
            ok, detail = has_wheel(req, py)
            rows.append({"python": py, "requirement": req, "aarch64_wheel": ok, "detail": detail})
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            ok = "yes" if r["aarch64_wheel"] else "NO "
            print(f"py{r['python']}  {r['requirement']:<36} {ok}  {r['detail']}")
    runtime_ok = all(r["aarch64_wheel"] for r in rows if r.get("requirement") in RUNTIME)
    return 0 if runtime_ok else 1


if __name__ == "__main__":
    sys.exit(main())
