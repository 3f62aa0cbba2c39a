from __future__ import annotations

import json
import subprocess
import sys

from edgeface.cli.main import main


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names[:2] == ["mobilefacenet", "iresnet18"] and "mbf" in names


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeface.cli.main",
            "eval",
            "--model",
            "nope",
            "--pairs",
            str(tmp_path / "p.txt"),
            "--images",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
