"""Install and run away from the repository, as a user on a Raspberry Pi would: build the wheel, `pip
install` it (not editable) into a fresh venv, and from another folder, with nothing but a pack, run
`verify`, `enroll` + `identify` and `profile`.

"Nothing but a pack" is enforced, not assumed: as root (CI, this machine) every command runs in its own
mount namespace where ../shared and the repository are hidden under empty tmpfs mounts, so a default path
into either (the YuNet file, the raw_sample photos, the checkout's sources) finds nothing; elsewhere the
same commands run unhidden and the test checks that the installed package's default detector path does
not exist. No EDGEFACE_* variable, PYTHONPATH or virtualenv of the developer reaches the commands.

The base install (numpy, opencv-python-headless, onnxruntime, click, tqdm) takes ~25 s here: the venv is
made without pip (`--without-pip`, <1 s) and this interpreter's pip installs into it (`pip --python`)
without compiling bytecode.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeface.cli.main import main
from tests.test_runtime_support import SHARED, raw, reference_artifact

ROOT = Path(__file__).resolve().parents[1]
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
SOURCES = ("pyproject.toml", "README.md", "edgeface", "converters", "runtime")


def _can_hide() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(SHARED)],
        capture_output=True,
    )
    return probe.returncode == 0


def _build_wheel(tmp: Path) -> Path:
    """From a copy of the package sources, so no build/ or egg-info lands in (or leaks from) the checkout."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy(ROOT / name, src / name)
    try:  # the dev venv has a new enough setuptools: build without an isolated build environment
        isolated = int(importlib.metadata.version("setuptools").split(".")[0]) < 68
    except importlib.metadata.PackageNotFoundError:
        isolated = True
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)]
    subprocess.run(cmd if isolated else [*cmd, "--no-build-isolation"], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("edgeface-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)  # not the repository's .venv python
    pip_version = tuple(int(x) for x in importlib.metadata.version("pip").split(".")[:2])
    if pip_version >= (22, 3):  # `pip --python`: no pip needed inside the new venv
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
        install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        install = [str(venv / "bin" / "python"), "-m", "pip"]
    r = subprocess.run(
        [*install, "install", "-q", "--no-compile", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def test_installed_wheel_runs_a_pack_with_no_repository_and_no_shared(tmp_path) -> None:
    times: dict[str, float] = {}
    t0 = time.monotonic()
    # the pack, made with the development install; the venv will have nothing else
    pack = tmp_path / "work" / "mfn_pack"
    archive = tmp_path / "work" / "mfn_pack.tar.gz"
    archive.parent.mkdir()
    assert main(["pack", str(reference_artifact()), "-o", str(pack), "--detector", str(YUNET),
                 "--license", str(SHARED / "models" / "LICENSE.mobilefacenet_ms1m"),
                 "--archive", str(archive)]) == 0  # fmt: skip
    work = pack.parent
    photos = {}
    for name, i in (("Jimmy_Carter", 2), ("Jimmy_Carter", 4), ("Anna_Kournikova", 2)):
        photos[f"{name}_{i}"] = shutil.copy(raw(name, i), work / f"{name}_{i}.jpg")
    bare = work / "bare"  # the same artifact outside any pack
    bare.mkdir()
    shutil.copy(pack / "mobilefacenet_ms1m_fp32.onnx", bare / "m.onnx")
    shutil.copy(pack / "mobilefacenet_ms1m_fp32.onnx.json", bare / "m.onnx.json")
    times["pack"] = time.monotonic() - t0

    t1 = time.monotonic()
    wheel = _build_wheel(tmp_path)
    times["wheel"] = time.monotonic() - t1
    t2 = time.monotonic()
    venv = _fresh_venv(tmp_path, wheel)
    times["venv + install"] = time.monotonic() - t2

    hide = _can_hide()
    hidden = [SHARED, *([ROOT] if ROOT not in tmp_path.parents else [])]
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if hide:
            mounts = " && ".join(f'mount -t tmpfs -o size=1m tmpfs "${i + 1}"' for i in range(len(hidden)))
            script = f'{mounts} && shift {len(hidden)} && exec "$@"'
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                   *map(str, hidden), *cmd]  # fmt: skip
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    t3 = time.monotonic()
    where = run("python", "-c", "import edgeface, edgeface.runtime.detect as d, os, sys; "
                "print(edgeface.__file__); print(d.DEFAULT_YUNET.exists()); print(os.listdir(sys.argv[1]))",
                str(SHARED))  # fmt: skip
    assert where.returncode == 0, where.stderr
    location, default_detector_exists, shared_listing = where.stdout.splitlines()
    assert Path(location).is_relative_to(venv), f"edgeface imported from {location}, not the wheel"
    assert default_detector_exists == "False"
    assert shared_listing == ("[]" if hide else shared_listing), "../shared was not hidden"
    no_torch = run(
        "python", "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
    )
    assert no_torch.returncode == 0, "the base install pulled torch"

    a, b, c = (p.name for p in photos.values())
    # outside a pack there is no detector anywhere: the pack is what makes the commands below work
    r = run("edgeface", "verify", a, b, "--model", "bare/m.onnx")
    assert r.returncode == 2 and "face detector model not found" in r.stderr, r.stderr
    for model in ("mfn_pack", "mfn_pack.tar.gz"):
        r = run("edgeface", "verify", a, b, "--model", model, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["match"] is True, r.stderr
        assert r.stderr.strip() == "", r.stderr  # quiet: no library noise, one artifact so no note
        r = run("edgeface", "verify", a, c, "--model", model, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["match"] is False, r.stderr
    r = run("edgeface", "enroll", "--name", "Jimmy Carter", a, "--model", "mfn_pack", "--gallery", "g.sqlite")
    assert r.returncode == 0, r.stderr
    r = run("edgeface", "identify", b, "--model", "mfn_pack.tar.gz", "--gallery", "g.sqlite", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["identity"] == "Jimmy Carter", r.stderr
    r = run("edgeface", "profile", "mfn_pack", "--image", a, "--runs", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    prof = json.loads(r.stdout)
    assert prof["backend"] == "onnxruntime" and prof["runs"] == 3 and "detect" in prof["stages_ms"]
    r = run("edgeface", "pack", "--check", "mfn_pack.tar.gz")
    assert r.returncode == 0 and "all 5 files match" in r.stdout, r.stderr
    # the tamper check, from the installed command
    shutil.copytree(pack, work / "tampered")
    data = bytearray((work / "tampered" / YUNET.name).read_bytes())
    data[500] ^= 1
    (work / "tampered" / YUNET.name).write_bytes(bytes(data))
    r = run("edgeface", "verify", a, b, "--model", "tampered")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not match its SHA-256" in r.stderr
    times["commands"] = time.monotonic() - t3
    print(f"\nwheel test ({'shared and repository hidden' if hide else 'not hidden'}): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))  # fmt: skip
