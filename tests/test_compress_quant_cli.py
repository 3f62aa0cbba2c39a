"""`edgeface quantize` from the command line: bad input, mixed precision, and QAT under torchrun (DDP)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeface.cli.main import main
from edgeface.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
USER_MODEL = "tests._user_model_quant:small_face_net"


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Path:
    """A small folder of real aligned faces from the compression split (no test identity)."""
    from edgeface.data.folders import compression_images

    root = tmp_path_factory.mktemp("faces")
    for p in compression_images(lfw)[:24]:
        (root / p.name).symlink_to(p)
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "w5a9"], "unsupported --bits"),
        (["--bits", "mixed"], "needs --size-budget"),
        (["--layer-bits", "conv1=eight"], "--layer-bits"),
    ],
)
def test_bad_options_fail_cleanly(args: list[str], message: str, faces: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "q.pt"
    rc = main(["quantize", "-m", USER_MODEL, "--calib", str(faces), "-o", str(out), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_empty_or_imageless_calibration_folder(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("not a face")
    for folder in (empty, tmp_path / "texts"):
        rc = main(["quantize", "-m", USER_MODEL, "--calib", str(folder), "-o", str(tmp_path / "q.pt")])
        assert rc == 2
        assert "no images" in capsys.readouterr().err
    assert not list(tmp_path.glob("q.pt*")) and not list(tmp_path.glob(".q.pt*"))


def test_unknown_layer_override_names_real_layers(faces: Path, tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "quantize",
            "-m",
            USER_MODEL,
            "--calib",
            str(faces),
            "--num-images",
            "8",
            "--quiet",
            "--layer-bits",
            "nope=8",
            "-o",
            str(tmp_path / "q.pt"),
        ]
    )
    assert rc == 2
    assert "stem.0" in capsys.readouterr().err


def test_mixed_precision_meets_the_size_budget(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "mixed.pt"
    plan = tmp_path / "plan.json"
    rc = main(
        [
            "quantize",
            "-m",
            USER_MODEL,
            "--calib",
            str(faces),
            "--bits",
            "mixed",
            "--size-budget",
            "0.23",
            "--num-images",
            "16",
            "--quiet",
            "--plan",
            str(plan),
            "-o",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    loaded = load_model(USER_MODEL, out)
    bits = set(loaded.spec.layer_bits.values())
    assert loaded.spec.precision == "mixed" and bits == {6, 8}  # w8 everywhere is 0.25 of fp32: must mix
    from edgeface.compress.quant import model_size_bytes

    fp32 = load_model(USER_MODEL)
    assert model_size_bytes(loaded.model) <= 0.23 * model_size_bytes(fp32.model)
    assert plan.is_file()


def test_qat_under_torchrun_two_processes_gloo(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "qat.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "edgeface.cli.main",
        "quantize",
        "-m",
        USER_MODEL,
        "--calib",
        str(faces),
        "--method",
        "qat",
        "--bits",
        "w6a6",
        "--num-images",
        "8",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--quiet",
        "-o",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out, weights_only=True)
    record = ckpt["transforms"][-1]
    assert record["method"] == "qat" and record["world_size"] == 2 and record["steps"] == 2
    fp32, q = load_model(USER_MODEL), load_model(USER_MODEL, out)
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(fp32.model(x), q.model(x))
    assert cos.mean() > 0.9


def test_quantizing_a_pruned_checkpoint_keeps_its_history(faces: Path, tmp_path: Path) -> None:
    pruned, out = tmp_path / "pruned.pt", tmp_path / "pq.pt"
    assert main(["prune", "-m", USER_MODEL, "--ratio", "0.3", "-o", str(pruned)]) == 0
    rc = main(
        [
            "quantize",
            "-m",
            USER_MODEL,
            "-w",
            str(pruned),
            "--calib",
            str(faces),
            "--num-images",
            "8",
            "--quiet",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    ckpt = torch.load(out, weights_only=True)
    assert [t["kind"] for t in ckpt["transforms"]] == ["prune", "quant"]
    again = load_model(USER_MODEL, out)
    assert again.spec.precision == "w8a8"
    assert again.model(torch.randn(2, 3, 112, 112)).shape == (2, 64)
    # a quantized checkpoint is not quantized twice
    assert (
        main(
            [
                "quantize",
                "-m",
                USER_MODEL,
                "-w",
                str(out),
                "--calib",
                str(faces),
                "-o",
                str(tmp_path / "x.pt"),
            ]
        )
        == 2
    )
