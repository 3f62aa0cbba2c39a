"""The README's main command, run as a newcomer runs it, prints its results and nothing alarming (issue 16).

A first run that shows "Failed to load ... Could not load this library", absl's "All log messages before
absl::InitializeLog()" or LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" looks broken even when
it worked. This runs the exact `edgeface ...` part of the README's first command (only the output folder
moved into a temporary one) and asserts that stderr holds nothing but edgeface's own progress bar and that
stdout is one summary line per artifact. It is the slowest test (one int8 ONNX + TFLite export, ~1 min on
an idle 2-core machine), and the only one that sees the whole command's output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"^export: .*\|")  # tqdm frames of edgeface's own bar (desc "export")
# Our own measured speed check may warn on a busy or int8-slow CPU; it is a result, not library noise.
SPEED_WARNING = re.compile(r"^warning: \S+ is not faster than its fp32 twin here \(\d+\.\d\dx, ")


def _readme_export_args() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    first = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)[0].strip()
    command = next(part.strip() for part in first.split("&&") if part.strip().startswith("edgeface "))
    args = shlex.split(command)[1:]
    out = args.index("-o")
    return args[:out] + args[out + 2 :]


def test_readme_main_command_prints_results_and_no_library_noise(tmp_path):
    args = _readme_export_args()
    assert args[:2] == ["export", "--int8"], args
    out_dir = tmp_path / "artifacts"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeface.cli.main", *args, "-o", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GLOG", "ABSL"))},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = [f.strip() for f in re.split(r"[\r\n]", proc.stderr) if f.strip()]
    noise = [f for f in frames if not (PROGRESS.match(f) or SPEED_WARNING.match(f))]
    assert noise == [], "\n".join(noise)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout  # one line per artifact, then the pack's line
    assert all(line.startswith(str(out_dir)) for line in lines[:2]), proc.stdout
    assert lines[2].startswith(f"pack {out_dir}: 2 artifact(s)"), proc.stdout
    assert {p.name for p in out_dir.iterdir() if p.suffix in (".onnx", ".tflite")} == {
        "mobilefacenet_int8.onnx",
        "mobilefacenet_int8.tflite",
        "face_detection_yunet_2026may.onnx",
    }
