"""Structured pruning: PReLU/depthwise consistency, checkpoint round trips, the `edgeface prune` CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeface.cli.main import main
from edgeface.compress.prune import layer_shapes, prune_model, rebuild
from edgeface.data.folders import compression_images
from edgeface.models.loading import load_model, read_checkpoint
from edgeface.models.mbf import MBF
from edgeface.models.registry import build_model

USER_MODEL = "tests._user_model:tiny_face_net"


@pytest.fixture(scope="module")
def face_dir(lfw, tmp_path_factory) -> Path:
    """A small folder of real compression-split faces (any folder is valid --data)."""
    out = tmp_path_factory.mktemp("faces")
    for p in compression_images(lfw)[:16]:
        shutil.copy(p, out / f"{p.parent.name}_{p.name}")
    return out


def _pairs_subset(lfw: Path, tmp_path: Path, per_fold: int = 3) -> Path:
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    out = [f"10 {per_fold}"]
    for fold in range(10):
        block = lines[fold * 600 : (fold + 1) * 600]
        out += block[:per_fold] + block[300 : 300 + per_fold]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(out) + "\n")
    return path


def test_mbf_prelu_and_depthwise_stay_consistent_and_reload(tmp_path) -> None:
    # The registry's mbf with fewer repeats and 48x48 faces (same blocks: grouped stem conv, depthwise,
    # PReLU, GDC head), so the dependency graph traces in seconds.
    model = MBF(blocks=(1, 1, 1, 1), input_size=48)
    spec = build_model("mbf")[1].replace(input_size=(48, 48))
    before = layer_shapes(model)
    result = prune_model(model, spec, 0.3, importance="l1", progress=False)
    x = torch.randn(2, 3, 48, 48)
    assert model.eval()(x).shape == (2, 512)  # embedding size is part of the contract
    assert result.macs_reduction >= 0.25 and result.params_after < result.params_before
    after = layer_shapes(model)
    assert after != before
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and before[name]["groups"] == before[name]["in"] > 1:
            assert m.groups == m.in_channels == m.out_channels  # depthwise stays depthwise
        elif isinstance(m, nn.Conv2d):  # grouped convs keep whole groups
            assert m.groups == before[name]["groups"]
            assert m.in_channels % m.groups == m.out_channels % m.groups == 0
        if isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[2], nn.PReLU):
            assert m[2].num_parameters == m[1].num_features == m[0].out_channels
    assert set(result.protected) == {"layers.0.layers.0", "features.layers.2"}
    assert after["layers.0.layers.0"]["out"] == before["layers.0.layers.0"]["out"]

    # replay: from the record's layer table, and from the weights' shapes alone
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for record in (result.record, {"kind": "prune"}):
        fresh = rebuild(MBF(blocks=(1, 1, 1, 1), input_size=48), record, state)
        fresh.load_state_dict(state)
        assert torch.allclose(fresh.eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_cli_rejects_ratio_outside_unit_interval(ratio, tmp_path, capsys) -> None:
    out = tmp_path / "out.pt"
    code = main(["prune", "-m", USER_MODEL, "--ratio", ratio, "-o", str(out)])
    assert code != 0
    err = capsys.readouterr().err
    assert "Invalid value for '--ratio'" in err and "0.0<x<1.0" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_unknown_protect_and_missing_data_are_clear_errors(tmp_path, capsys) -> None:
    out = tmp_path / "out.pt"
    assert main(["prune", "-m", USER_MODEL, "--ratio", "0.3", "--protect", "nope", "-o", str(out)]) == 2
    assert "--protect nope" in capsys.readouterr().err
    assert main(["prune", "-m", USER_MODEL, "--ratio", "0.3", "--finetune-epochs", "1", "-o", str(out)]) == 2
    assert "--data" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_cli_user_model_iterative_taylor_finetune_then_prune_again(face_dir, tmp_path, capsys) -> None:
    first = tmp_path / "p1.pt"
    args = ["prune", "-m", USER_MODEL, "--ratio", "0.5", "--importance", "taylor", "--steps", "2",
            "--data", str(face_dir), "--finetune-epochs", "1", "--max-steps", "4", "--batch-size", "4",
            "--loss", "cosine+ekd", "--report", str(tmp_path / "p1.md"), "-o", str(first),
            "--json"]  # fmt: skip
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prune"]["macs_after"] < data["prune"]["macs_before"]
    assert [f["after_step"] for f in data["finetune"]] == [1, 2]
    assert all(f["steps"] == 2 for f in data["finetune"])
    assert "| MACs |" in (tmp_path / "p1.md").read_text()

    # prune-then-quantize: the pruned checkpoint is valid --weights for `edgeface quantize`
    quantized = tmp_path / "p1_int8.pt"
    q_args = ["quantize", "-m", USER_MODEL, "-w", str(first), "--calib", str(face_dir), "--num-images", "8",
              "--calibration", "minmax", "--quiet", "-o", str(quantized)]  # fmt: skip
    assert main(q_args) == 0
    assert [t["kind"] for t in read_checkpoint(quantized)["transforms"]] == ["prune", "quant"]
    assert load_model(USER_MODEL, quantized).model(torch.randn(1, 3, 112, 112)).shape == (1, 32)

    second = tmp_path / "p2.pt"
    # --round-to 1: the one prunable layer is 16 wide by now, and 25 % of it rounds back to 16 at 8
    args = [
        "prune",
        "-m",
        USER_MODEL,
        "-w",
        str(first),
        "--ratio",
        "0.25",
        "--round-to",
        "1",
        "-o",
        str(second),
    ]
    assert main(args) == 0
    ckpt = read_checkpoint(second)
    assert [t["kind"] for t in ckpt["transforms"]] == ["prune", "prune"]
    assert ckpt["model"] == USER_MODEL
    a, b = load_model(USER_MODEL, first), load_model(USER_MODEL, second)
    n_a = sum(p.numel() for p in a.model.parameters())
    n_b = sum(p.numel() for p in b.model.parameters())
    assert n_b < n_a
    assert b.model(torch.randn(1, 3, 112, 112)).shape == (1, 32)


def test_cli_pruned_mobilefacenet_goes_back_into_eval(lfw, mfn_weights, tmp_path) -> None:
    pruned = tmp_path / "mfn_p30.pt"
    args = ["prune", "-m", "mobilefacenet", "-w", str(mfn_weights), "--ratio", "0.3", "-o", str(pruned)]
    assert main(args) == 0
    ckpt = read_checkpoint(pruned)
    assert ckpt["model"] == "mobilefacenet" and ckpt["spec"]["embedding_dim"] == 128
    assert ckpt["state_dict"]["conv2.0.weight"].shape[0] < 512  # physically smaller
    pairs = _pairs_subset(lfw, tmp_path, per_fold=2)
    report = tmp_path / "eval.json"
    eval_args = ["eval", "-m", "mobilefacenet", "-w", str(pruned), "--pairs", str(pairs), "--images",
                 str(lfw / "aligned112"), "--folds", "6-7", "--json", str(report)]  # fmt: skip
    assert main(eval_args) == 0
    assert json.loads(report.read_text())["n_pairs"] == 8


def test_interrupted_prune_writes_nothing_and_resumes_exactly(
    face_dir, tmp_path, monkeypatch, capsys
) -> None:
    import edgeface.compress.distill as distill_module

    real = distill_module.distill
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C during the fine-tune after the second pruning step
        return real(*args, **kwargs)

    def args(out: Path) -> list[str]:
        torch.manual_seed(0)  # the user model starts from random weights: the same ones every run
        return ["prune", "-m", USER_MODEL, "--ratio", "0.5", "--steps", "2", "--data", str(face_dir),
                "--finetune-epochs", "1", "--max-steps", "4", "--batch-size", "4", "--augment", "strong",
                "--report", str(out.with_suffix(".md")), "-o", str(out), "--json"]  # fmt: skip

    whole = tmp_path / "whole" / "p.pt"
    whole.parent.mkdir()
    assert main(args(whole)) == 0
    capsys.readouterr()

    monkeypatch.setattr(distill_module, "distill", interrupted)
    out = tmp_path / "run" / "p.pt"
    out.parent.mkdir()
    assert main(args(out)) == 130
    assert "Traceback" not in capsys.readouterr().err
    # no output and no report, only the state a rerun continues from
    assert [p.name for p in out.parent.iterdir()] == ["p.pt.resume"]
    monkeypatch.setattr(distill_module, "distill", real)
    assert main(args(out)) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["after_step"] for f in data["finetune"]] == [1, 2]  # step 1 was not redone, step 2 finished
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.md", "p.pt"]
    a, b = read_checkpoint(whole)["state_dict"], read_checkpoint(out)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same as never interrupted

    # a changed setting is refused rather than silently mixed with the saved run
    monkeypatch.setattr(distill_module, "distill", interrupted)
    calls["n"] = 0
    assert main(args(out)) == 130
    monkeypatch.setattr(distill_module, "distill", real)
    changed = args(out)
    changed[changed.index("--max-steps") + 1] = "6"
    assert main(changed) == 2
    assert "other settings" in capsys.readouterr().err
