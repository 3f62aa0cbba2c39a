"""A checkpoint is data: nothing in it may choose the code that edgeface imports or calls (issue 10).

The attack: an edgeface checkpoint whose "model" field names `face_utils:make`, with a face_utils.py on the
import path. Before the fix, loading it with any --model imported that module (running its top level) and
called the factory. The marker file written by the planted module's import is the evidence.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeface.errors import EdgefaceError
from edgeface.models.checkpoint import save
from edgeface.models.loading import CHECKPOINT_FORMAT, load_model
from edgeface.models.registry import build_model

PLANTED = """
from pathlib import Path
Path(__file__).with_name("PWNED").write_text("imported")
import torch
def make():
    Path(__file__).with_name("CALLED").write_text("called")
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
"""


def _crafted(tmp_path: Path, model_field: str) -> Path:
    net, spec = build_model("mobilefacenet")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model_field,
        "spec": spec.to_dict(),
        "transforms": [],
        "state_dict": net.state_dict(),
    }
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "edgeface.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_checkpoint_cannot_import_a_module_the_user_did_not_name(tmp_path, lfw):
    (tmp_path / "face_utils.py").write_text(PLANTED)
    ckpt = _crafted(tmp_path, "face_utils:make")
    args = ["--pairs", str(lfw / "pairs.txt"), "--images", str(lfw / "aligned112"), "--folds", "10"]
    r = _run(["eval", "--model", "mobilefacenet", "--weights", str(ckpt), *args], tmp_path)
    assert not (tmp_path / "PWNED").exists(), "the checkpoint made edgeface import face_utils"
    assert not (tmp_path / "CALLED").exists()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "face_utils:make" in lines[0] and "--model" in lines[0]


@pytest.mark.parametrize("field", ["os:abort", "tempfile:mkdtemp", "builtins:exit", "", 7, None])
def test_checkpoint_model_field_is_never_called(tmp_path, field):
    ckpt = _crafted(tmp_path, field)
    with pytest.raises(EdgefaceError, match="--model|corrupt"):
        load_model("mobilefacenet", ckpt)


def test_recorded_user_model_loads_only_when_the_user_names_it(tmp_path, monkeypatch):
    (tmp_path / "face_utils.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    from edgeface.spec import ModelSpec

    spec = ModelSpec(name="face_utils:make", embedding_dim=4)
    ckpt = save(tmp_path / "ok.pt", net, spec, "face_utils:make", [])
    with pytest.raises(EdgefaceError, match="pass --model face_utils:make"):
        load_model("iresnet18", ckpt)
    assert not (tmp_path / "PWNED").exists()
    loaded = load_model("face_utils:make", ckpt)  # the user typed it: their code, their call
    assert (tmp_path / "PWNED").exists() and loaded.spec.embedding_dim == 4


def test_builtin_mismatch_is_refused(tmp_path):
    ckpt = _crafted(tmp_path, "mobilefacenet")
    assert load_model("mobilefacenet", ckpt).spec.embedding_dim == 128
    with pytest.raises(EdgefaceError, match="pass --model mobilefacenet"):
        load_model("mbf", ckpt)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (
            {"kind": "prune", "layers": {"conv1.0": {"type": "Conv2d", "in": 3, "out": 10**9, "groups": 1}}},
            "integer in",
        ),
        (
            {"kind": "prune", "layers": {"conv1.0": {"type": "Conv2d", "in": 3, "out": -4, "groups": 1}}},
            "integer in",
        ),
        ({"kind": "prune", "layers": {"nope": {"type": "Conv2d"}}}, "does not have"),
        ({"kind": "os.system"}, "unknown transform"),
        ({"kind": "quant", "plan": "x"}, "bit plan"),
    ],
)
def test_transform_records_are_validated(tmp_path, record, match):
    net, spec = build_model("mobilefacenet")
    path = tmp_path / "c.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": "mobilefacenet",
            "spec": spec.to_dict(),
            "transforms": [record],
            "state_dict": net.state_dict(),
        },
        path,
    )
    with pytest.raises(EdgefaceError, match=match):
        load_model("mobilefacenet", path)
