"""Shared machinery of the bad-input suite (tests/test_bad_input_*.py, one file per class of input).

Every case runs through the CLI, where a user meets it, and asserts the same contract (issue 10): exactly one
`error:` line on stderr (warnings aside), the expected exit code, no traceback, and no data changed (the
bytes of every file in the folders the command could write, gallery included). Builders here are cached per
session so the suite stays fast.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeface.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"
RAW = LFW / "raw_sample"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def errors(self) -> list[str]:
        """stderr lines that are not warnings or progress bars."""
        return [
            ln
            for ln in self.err.replace("\r", "\n").splitlines()
            if ln.strip() and not ln.startswith("warning:") and "it/s]" not in ln and "img/s]" not in ln
        ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Result(code, out, err)


def run_process(*argv: str, stdout: object = subprocess.PIPE, **kw: object) -> Result:
    """The CLI in its own interpreter: for signals, stdout devices and mount namespaces."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "edgeface.cli.main", *map(str, argv)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,  # type: ignore[arg-type]
    )
    return Result(r.returncode, r.stdout or "", r.stderr)


def assert_one_error(r: Result, fragment: str, code: int = 2) -> None:
    """The contract: one `error:` line containing `fragment`, exit `code`, never a traceback."""
    lines = r.errors()
    assert "Traceback" not in r.err and "Exception ignored" not in r.err, r.err
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert fragment in lines[0], lines[0]
    assert r.code == code, (r.code, r.err)


def snapshot(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (hidden ones included; a file path covers its SQLite -wal
    sibling): equal snapshots before and after a failed command mean it changed nothing."""
    out: dict[str, str] = {}
    for base in paths:
        files = (
            [p for p in base.rglob("*") if p.is_file()]
            if base.is_dir()
            else [p for p in base.parent.glob(base.name + "*") if p.is_file()]
        )
        for p in files:
            data = p.read_bytes()
            if p.name.endswith("-shm") or (p.name.endswith("-wal") and not data):
                continue  # SQLite's shared-memory index and an empty WAL hold no data
            out[str(p)] = hashlib.sha256(data).hexdigest()
    return out


def raw(name: str, i: int) -> Path:
    return RAW / name / f"{name}_{i:04d}.jpg"


FACE = raw("Bob_Hope", 1)
FACE2 = raw("Bob_Hope", 2)


@functools.cache
def artifact() -> Path:
    """The runtime tests' fp32 reference artifact (ONNX + sidecar spec with a calibrated threshold)."""
    from tests.test_runtime_support import reference_artifact

    return reference_artifact()


def artifact_copy(dest: Path, spec_edit: object = None) -> Path:
    """A copy of the reference artifact whose sidecar spec is `spec_edit(dict)`'s result (raw JSON text
    when it returns a str, so specs the serializer would refuse can be written)."""
    import json

    src = artifact()
    dest.mkdir(parents=True, exist_ok=True)
    onnx = dest / "model.onnx"
    shutil.copyfile(src, onnx)
    spec = json.loads(Path(str(src) + ".json").read_text())
    text = json.dumps(spec)
    if spec_edit is not None:
        edited = spec_edit(spec)  # type: ignore[operator]
        text = edited if isinstance(edited, str) else json.dumps(edited)
    Path(str(onnx) + ".json").write_text(text)
    return onnx


def make_gallery(path: Path, names: tuple[str, ...] = ("alice", "bob"), per: int = 2) -> Path:
    """A gallery bound to the reference artifact, with random templates (search cost is not the point)."""
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.gallery import Gallery, ModelTag

    a = artifact()
    tag = ModelTag.of(load_artifact(a).spec, a)
    rng = np.random.default_rng(0)
    with Gallery(path) as g:
        g.enroll_many([(n, rng.standard_normal((per, tag.embedding_dim)), None) for n in names], tag)
    return path


def tamper(path: Path, *sql: str, params: tuple[object, ...] = ()) -> None:
    """Damage a gallery the way a crash of another tool, a bad restore or an attacker would."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA foreign_keys = OFF")
        for i, statement in enumerate(sql):
            db.execute(statement, params if i == 0 else ())
    finally:
        db.close()


@functools.cache
def can_mount() -> bool:
    """Root with mount namespaces: read-only and full file systems are real tmpfs mounts in a private
    namespace (nothing outside the test sees them)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


def in_mount(mountpoint: Path, setup: str, *argv: str, ro: bool = False, size: str = "4m") -> Result:
    """Run the CLI with a fresh tmpfs on `mountpoint` (private mount namespace), after the shell `setup`
    (e.g. copying a gallery in); `ro` remounts it read-only first."""
    remount = f"mount -o remount,ro {mountpoint} && " if ro else ""
    cli = " ".join(_quote(a) for a in (sys.executable, "-m", "edgeface.cli.main", *map(str, argv)))
    script = f"mount -t tmpfs -o size={size} tmpfs {mountpoint} && {setup} && {remount}exec {cli}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, cwd=ROOT
    )
    return Result(r.returncode, r.stdout, r.stderr)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_snapshot_sees_a_change(tmp_path: Path) -> None:
    """The no-change assertion of the whole suite is only as good as this."""
    (tmp_path / ".hidden").write_text("a")
    before = snapshot(tmp_path)
    (tmp_path / ".hidden").write_text("b")
    assert snapshot(tmp_path) != before
    before = snapshot(tmp_path)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("x")
    assert snapshot(tmp_path) != before
