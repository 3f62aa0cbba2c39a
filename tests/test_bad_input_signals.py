"""Interrupts during an export: exit 130, one error line, no traceback, nothing written, no staging folder
left; a staging folder left by a killed export is swept by the next one (converters/staging.py).

The CLI cases are real exports of a tiny user model, signalled as soon as their hidden staging folder
appears (the TFLite one while litert-torch converts: a Ctrl-C there used to print a traceback from jax's
garbage-collection callback and then finish the export with exit 0).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from edgeface.converters.staging import STAGE_PREFIX, Interrupted, _host_tag, staged, sweep_stale

from tests.test_bad_input_support import LFW, ROOT


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # exited and reaped: no process has this id now (until reuse, seconds to hours away)


def _plant_stale(out: Path) -> Path:
    stale = out / f"{STAGE_PREFIX}{_dead_pid()}-{_host_tag()}-left"
    stale.mkdir(parents=True)
    (stale / "mobilefacenet_fp32.onnx").write_bytes(b"half an artifact")
    return stale


def _export(out: Path, fmt: str, sig: int, delay: float) -> tuple[int, str]:
    """Start an export, send `sig` to its process group `delay` s after its staging folder appears (as a
    terminal's Ctrl-C or a service manager's stop would), return (exit code, stderr)."""
    argv = [
        *("-m", "edgeface.cli.main", "export", "-m", "tests._user_model:tiny_face_net", "--fp32"),
        *("--format", fmt, "--calib", str(LFW), "--calib-images", "64", "--parity-images", "16"),
        *("--far", "0.01", "--min-cosine", "0.5", "-o", str(out), "--json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as a terminal's foreground job has it, even when these tests run with SIGINT ignored (nohup, &)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    mine = f"{STAGE_PREFIX}{proc.pid}-"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(mine) for p in out.glob(f"{STAGE_PREFIX}*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the export ended before it could be signalled: {proc.stderr.read()}"  # type: ignore[union-attr]
    time.sleep(delay)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _assert_clean_interrupt(code: int, err: str, out: Path) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert (code, errors) == (130, ["error: aborted"]), err[-3000:]
    assert list(out.iterdir()) == [], "an interrupted export left files behind"


def test_sigterm_during_export_cleans_its_staging_folder_and_sweeps_stale_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _plant_stale(out)  # from an export killed with SIGKILL earlier: swept when this one starts
    code, err = _export(out, "onnx", signal.SIGTERM, delay=0.0)
    _assert_clean_interrupt(code, err, out)


def test_sigint_during_the_tflite_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, err = _export(out, "tflite", signal.SIGINT, delay=3.0)  # inside litert-torch's conversion
    _assert_clean_interrupt(code, err, out)


def test_an_interrupt_swallowed_by_a_gc_callback_still_cancels(tmp_path: Path, capfd) -> None:
    """The mechanism behind the TFLite case, deterministic: SIGINT is delivered while a garbage-collection
    callback runs (where Python would print 'Exception ignored' and drop the KeyboardInterrupt). The guard
    neither raises there nor loses it: it is raised a moment later, outside, and nothing is written."""
    out = tmp_path / "out"
    delivered: list[float] = []
    stopped: list[float] = []
    gc.collect()  # earlier tests' garbage first: its finalizers are not what is tested here
    # the handler a foreground process has (a background job's SIGINT is ignored, and stays so: below)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_inside_gc_callback(out, delivered, stopped, capfd)
    finally:
        signal.signal(signal.SIGINT, before)


def _interrupt_inside_gc_callback(out: Path, delivered: list[float], stopped: list[float], capfd) -> None:
    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and not delivered:
            delivered.append(time.monotonic())
            signal.raise_signal(signal.SIGINT)  # the handler runs right here, inside the callback
            sum(range(1000))
        elif phase == "stop" and delivered and not stopped:
            stopped.append(time.monotonic())  # that collection is over (seconds on a big test-session heap)

    def slow_callback(phase: str, info: dict[str, int]) -> None:
        time.sleep(0.005)  # like jax's callback, which calls into XLA on every collection

    with pytest.raises(Interrupted):
        with staged(out) as stage:
            (stage / "model.onnx").write_bytes(b"artifact")
            gc.callbacks.insert(0, slow_callback)  # most retries of a timer alone land in these callbacks
            gc.callbacks.append(callback)
            try:
                gc.collect()  # the callback runs: SIGINT lands inside it
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # a converter's own work, allocating as it goes
                    junk = [[i] for i in range(10000)]
                    del junk
            finally:
                gc.callbacks.remove(callback)
                gc.callbacks.remove(slow_callback)
    # raised soon after the collection it was swallowed in, not after the 10 s the loop would run
    assert delivered and stopped and time.monotonic() - stopped[0] < 1.5
    assert list(out.iterdir()) == []
    assert "Exception ignored" not in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_an_ignored_interrupt_stays_ignored(tmp_path: Path) -> None:
    """A process started with SIGINT ignored (`nohup`, `cmd &` in a script) is not made interruptible by
    the guard: the signal does nothing and the output is written."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with staged(tmp_path / "out") as stage:
            (stage / "model.onnx").write_bytes(b"artifact")
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"artifact"


def test_sweep_keeps_live_and_foreign_staging_folders(tmp_path: Path) -> None:
    stale = _plant_stale(tmp_path)
    live = tmp_path / f"{STAGE_PREFIX}{os.getpid()}-{_host_tag()}-running"
    other_host = tmp_path / f"{STAGE_PREFIX}{_dead_pid()}-00000000-elsewhere"
    legacy = tmp_path / f"{STAGE_PREFIX}abc123"  # older edgeface: no owner recorded
    for d in (live, other_host, legacy):
        d.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(legacy, (old, old))
    assert sorted(sweep_stale(tmp_path)) == sorted([stale, legacy])
    assert live.exists() and other_host.exists()  # running here, or too recent to judge from elsewhere
