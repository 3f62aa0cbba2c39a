"""Repository invariants: packaging, the torch-free runtime, and README/CI agreement."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("edgeface", "converters", "runtime"):
            parts = rel.parts if rel.parts[0] == "edgeface" else ("edgeface", *rel.parts)
            found.add(".".join(parts))
    assert found == listed


def test_runtime_imports_no_torch():
    modules = sorted(p.stem for p in (ROOT / "runtime").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('edgeface.runtime.' + m)\n"
        "import edgeface.cli.main\n"
        "heavy = [m for m in ('torch', 'onnx', 'torch_pruning', 'litert_torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    commands = [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(commands) == 2, "README must hold exactly two commands for a newcomer"
    ci = [
        ln
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln and not ln.startswith(("#", "set ", "cd "))
    ]
    assert ci == [commands[1]]
    assert "edgeface export --int8" in commands[0] or "edgeface eval" in commands[0]
