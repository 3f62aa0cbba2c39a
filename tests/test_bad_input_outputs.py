"""Output paths that cannot take a file: a full disk or /dev/full, a read-only or virtual file system, a
parent that is a file. One error line from edgeface.io (the one place OS errors become messages), and nothing
written: eval's JSON report and ROC image appear together or not at all.

eval runs a tiny user model on a 12-pair file, so a whole evaluation costs about a second.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bad_input_support import (
    FACE,
    LFW,
    ROOT,
    Result,
    artifact,
    assert_one_error,
    can_mount,
    in_mount,
    make_gallery,
    run,
    run_process,
    snapshot,
)

MODEL = "tests._user_model:tiny_face_net"


@functools.cache
def small_pairs() -> Path:
    """Two folds of 3 same + 3 different pairs, taken from LFW's own pairs.txt (folds 1 and 2)."""
    lines = (LFW / "pairs.txt").read_text().splitlines()
    body = [*lines[1:4], *lines[301:304], *lines[601:604], *lines[901:904]]
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="edgeface-bad-outputs-")) / "pairs.txt"
    path.write_text("2 3\n" + "\n".join(body) + "\n")
    return path


def _eval(*extra: str) -> list[str]:
    return [
        "eval",
        "-m",
        MODEL,
        "--pairs",
        small_pairs(),
        "--images",
        LFW / "aligned112",
        "--folds",
        "1-2",
        *extra,
    ]


def test_eval_writes_both_outputs_when_it_can(capsys, tmp_path: Path) -> None:
    """The baseline the failures below are measured against."""
    r = run(capsys, *_eval("--json", tmp_path / "r.json"))
    assert r.code == 0, r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.roc.png"]
    assert json.loads((tmp_path / "r.json").read_text())["n_pairs"] == 12


def _file(p: Path) -> Path:
    p.write_text("I am a file")
    return p


CASES = {
    "json-onto-dev-full": (lambda d: (Path("/dev/full"), d / "roc.png"), "no space left on the device"),
    "json-parent-is-a-file": (lambda d: (_file(d / "f") / "r.json", None), "is a file, not a folder"),
    "roc-grandparent-is-a-file": (lambda d: (d / "r.json", _file(d / "f") / "x" / "r.png"), "is a file"),
    "json-folder-missing": (lambda d: (d / "nope" / "r.json", None), "does not exist"),
    "json-is-a-folder": (lambda d: (d, None), "is a directory"),
    "json-in-proc": (
        lambda d: (Path("/proc/edgeface-report.json"), d / "roc.png"),
        "/proc/edgeface-report.json",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_eval_unwritable_output(case: str, capsys, tmp_path: Path) -> None:
    make, fragment = CASES[case]
    json_path, roc_path = make(tmp_path)
    before = snapshot(tmp_path)
    extra = ["--json", json_path] + (["--roc", roc_path] if roc_path else [])
    r = run(capsys, *_eval(*map(str, extra)))
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before  # in particular no ROC image without its report


def _limited_file_size(limit: int) -> None:
    """The portable stand-in for a full disk: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored,
    which survives exec)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_while_saving_the_roc_image(tmp_path: Path) -> None:
    """The JSON report fits, the ROC image does not: neither is left behind."""
    if can_mount():
        mnt = tmp_path / "full"
        mnt.mkdir()
        r = in_mount(mnt, "true", *_eval("--json", str(mnt / "r.json")), size="12k")
        if r.code == 0:
            pytest.fail(f"a 12 KB tmpfs took the outputs: {r.err}")
        assert_one_error(r, "no space left on the device")
        return
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "edgeface.cli.main", *map(str, _eval("--json", str(out / "r.json")))],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=lambda: _limited_file_size(8192),
    )
    assert_one_error(Result(p.returncode, p.stdout, p.stderr), "file too large")
    assert list(out.iterdir()) == []


def test_json_on_stdout_onto_dev_full(tmp_path: Path) -> None:
    """`edgeface ... --json > /dev/full`: the runtime verbs in their own process (the interpreter's final
    flush must not add a second error)."""
    gallery = make_gallery(tmp_path / "g.sqlite")
    with open("/dev/full", "w") as full:
        for argv in (
            ["verify", FACE, FACE, "--model", artifact(), "--json"],
            ["gallery", "list", "--gallery", gallery],
        ):
            r = run_process(*map(str, argv), stdout=full)
            assert_one_error(r, "cannot write the output to standard output: no space left on the device")


def test_eval_report_on_stdout_onto_dev_full(capsys, monkeypatch) -> None:
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)  # the real device under the real print
        r = run(capsys, *_eval("--json", "-"))
    assert_one_error(r, "cannot write the output to standard output: no space left on the device")


EXPORT_OUT = {
    "output-is-a-file": (lambda d: _file(d / "out"), "exists and is not a folder"),
    "output-under-a-file": (lambda d: _file(d / "f") / "out", "cannot create output folder"),
    "output-in-proc": (lambda d: Path("/proc/edgeface-export"), "cannot create output folder"),
}


@pytest.mark.parametrize("case", list(EXPORT_OUT))
def test_export_unwritable_output_folder(case: str, capsys, tmp_path: Path) -> None:
    """Checked before the model is loaded or any image read."""
    make, fragment = EXPORT_OUT[case]
    out = make(tmp_path)
    before = snapshot(tmp_path)
    r = run(capsys, "export", "-m", MODEL, "--fp32", "--format", "onnx", "--calib", LFW, "-o", out, "--json")
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


def test_read_only_output_folder(tmp_path: Path) -> None:
    if not can_mount():
        pytest.skip("needs root and mount namespaces for a read-only file system")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = in_mount(mnt, "true", *_eval("--json", str(mnt / "r.json")), ro=True)
    assert_one_error(r, "is read-only")
