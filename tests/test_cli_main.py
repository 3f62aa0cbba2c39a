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


def test_missing_required_option_is_one_error_line(capsys):
    assert main(["verify", "a.jpg", "b.jpg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Missing option '--model'")


def _boom_command():
    import click

    @click.command("boom")
    @click.option("--kind", default="internal")
    def boom(kind: str) -> None:
        from edgeface.errors import ModelError

        if kind == "model":
            raise ModelError(
                "cannot quantize layer 'blocks.3.attn' (op Einsum); try --keep-float blocks.3.attn"
            )
        raise RuntimeError("something of ours broke\nsecond line")

    return boom


def test_our_failures_exit_1_with_traceback_only_under_debug(monkeypatch, capsys):
    import edgeface.cli.main as cli_main

    monkeypatch.setitem(cli_main.COMMANDS, "boom", "tests.test_cli_main:_BOOM")
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: internal failure (RuntimeError: something of ours broke)")
    assert main(["boom", "--kind", "model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot quantize layer 'blocks.3.attn' (op Einsum); try --keep-float blocks.3.attn"]
    assert main(["--debug", "boom"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: internal failure")


_BOOM = _boom_command()


def test_third_party_chatter_is_quiet_by_default_and_back_with_verbose(tmp_path):
    """LiteRT's native "INFO: Created TensorFlow Lite XNNPACK delegate" banner and torchao's "Failed to load"
    log lines are off at default verbosity (edgeface.quiet) and shown with -v."""
    code = (
        "import sys\n"
        "from edgeface.cli.main import main\n"
        "from edgeface import quiet\n"
        "quiet.configure(verbose='-v' in sys.argv)\n"
        "import logging, warnings\n"
        "logging.getLogger('torchao').warning('Failed to load libfoo.so')\n"
        "warnings.warn_explicit('LeafSpec is deprecated', FutureWarning, 'x.py', 1, module='torch.utils')\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "from edgeface.quiet import native_quiet\n"
        "import os\n"
        "with native_quiet():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code, "-v"], capture_output=True, text=True)
    for line in ("Failed to load libfoo.so", "LeafSpec is deprecated", "XNNPACK delegate"):
        assert line in loud.stderr


def test_native_output_is_replayed_when_the_call_fails(capfd):
    import os

    import pytest

    from edgeface.quiet import native_quiet

    with pytest.raises(RuntimeError):
        with native_quiet():
            os.write(2, b"the library's own explanation\n")
            raise RuntimeError("boom")
    assert "the library's own explanation" in capfd.readouterr().err
