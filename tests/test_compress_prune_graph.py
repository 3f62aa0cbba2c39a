"""Pruning any model: hybrids (what is pruned, what stays whole and why), trained PReLU slopes, budgets."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeface.cli.main import main
from edgeface.compress.budget import macs_measure, parse_macs, search_ratio
from edgeface.compress.prune import count_macs_params, layer_shapes, prune_model, rebuild
from edgeface.compress.prune_groups import reshape_keeps_channels
from edgeface.errors import EdgefaceError, ModelError
from edgeface.models.loading import load_model, read_checkpoint
from edgeface.models.mbf import MBF
from edgeface.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
HYBRID = "tests._hybrid_model:tiny_hybrid"
XS_DIR = ROOT.parent / "shared" / "models" / "edgeface_xs"


@pytest.mark.parametrize(
    ("src", "dst", "channels", "ok"),
    [
        ((2, 16, 7, 7), (2, 16, 49), 16, True),  # spatial dims merged, channel axis whole
        ((2, 49, 16), (2, 7, 7, 16), 16, True),  # channels-last tokens back to a map
        ((2, 7, 7, 64), (98, 64), 64, True),  # Linear on a 4-d input
        ((2, 16, 1, 1), (2, 16), 16, True),  # squeeze before the embedding layer
        ((2, 16, 7, 7), (2, 784), 16, True),  # channel-major flatten into a Linear (IResNet fc)
        ((2, 49, 48), (2, 49, 3, 2, 8), 48, False),  # qkv split into q/k/v and heads
        ((2, 49, 2, 8), (2, 49, 16), 16, False),  # heads merged back: the channel axis is rebuilt
        ((2, 7, 7, 16), (2, 16, 49), 16, False),  # a reshape that transposes by position
    ],
)
def test_reshape_channel_rule(src, dst, channels, ok) -> None:
    assert reshape_keeps_channels(src, dst, channels) is ok


def test_hybrid_prunes_what_is_safe_and_names_what_stays_whole() -> None:
    model, spec = build_model(HYBRID)
    x = torch.randn(2, 3, 112, 112)
    before = layer_shapes(model)
    result = prune_model(model, spec, 0.3, scope="all", round_to=1, progress=False)
    after = layer_shapes(model)
    assert model.eval()(x).shape == (2, 32)
    # stage 1's residual stream (downsample conv, depthwise convs, LayerNorms, layer-scale gammas) and every
    # MLP hidden width were pruned together
    width = after["down1.1"]["out"]
    assert width == after["stage1.0.norm"]["shape"][0] == after["stage1.1.gamma"]["shape"][0]
    assert after["down1.1"]["out"] < before["down1.1"]["out"]
    assert after["stage1.0.conv_dw"]["groups"] == after["stage1.0.conv_dw"]["out"]  # still depthwise
    assert after["stage2.0.mlp.fc1"]["out"] < before["stage2.0.mlp.fc1"]["out"]
    # the split stream, the q/k/v heads and the temperature stayed whole, each with the op that forbids it
    assert after["down2.1"]["out"] == 24 and after["stage2.1.xca.qkv"]["out"] == 72
    assert model.stage2[1].xca.temperature.shape == (2, 1, 1)
    reasons = {g["layer"]: g["reason"] for g in result.left_whole}
    assert any("split" in r and "down2.1" in r for r in reasons.values())
    assert "unbind" in reasons["stage2.1.xca.qkv"] or "reshape" in reasons["stage2.1.xca.qkv"]
    # the record (LayerNorm and Parameter entries included) rebuilds the same network
    for record in (result.record, {"kind": "prune"}):
        fresh = rebuild(build_model(HYBRID)[0], record, model.state_dict())
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh.eval()(x), model(x))


def test_trained_prelu_slopes_follow_their_channels() -> None:
    torch.manual_seed(0)
    model = MBF(blocks=(1, 1, 1, 1), input_size=48)
    spec = build_model("mbf")[1].replace(input_size=(48, 48))
    g = torch.Generator().manual_seed(1)
    slopes, means = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, nn.PReLU):  # trained-like slopes: negative and above 1 (issue 11)
            m.weight.data = -4.0 + 6.2 * torch.rand(m.num_parameters, generator=g)
            slopes[name] = m.weight.detach().clone()
        if isinstance(m, nn.BatchNorm2d):  # distinct per-channel fingerprints to recover kept indices
            m.running_mean.copy_(torch.randperm(m.num_features, generator=g).float())
            means[name] = m.running_mean.clone()
    x = torch.randn(2, 3, 48, 48)
    prune_model(model, spec, 0.3, importance="l1", round_to=1, progress=False)
    assert model.eval()(x).shape == (2, 512)
    modules = dict(model.named_modules())
    checked = 0
    for name, m in modules.items():
        if isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[2], nn.PReLU):
            bn_name, act_name = f"{name}.1", f"{name}.2"
            original = means[bn_name].tolist()
            kept = [original.index(float(v)) for v in modules[bn_name].running_mean]  # original indices
            assert kept == sorted(kept) and len(kept) == m[2].num_parameters
            assert torch.equal(m[2].weight.detach(), slopes[act_name][kept])
            checked += len(kept) < len(slopes[act_name])
    assert checked >= 2  # pruned PReLUs were checked, not only untouched ones
    every = torch.cat(list(slopes.values()))
    assert every.min() < -3 and every.max() > 2


def test_parse_macs_and_budget_search_meets_the_target() -> None:
    assert parse_macs("150M", 300_000_000) == 150_000_000
    assert parse_macs("0.5", 300_000_000) == 150_000_000
    assert parse_macs("1.2e8", 300_000_000) == 120_000_000
    for bad in ("nan", "-1", "abc", "400M"):
        with pytest.raises(EdgefaceError):
            parse_macs(bad, 300_000_000)
    model, spec = build_model(HYBRID)
    macs0, _ = count_macs_params(model, spec)
    target = 0.8 * macs0
    ratio, probes = search_ratio(model, spec, macs_measure(spec), target, {"scope": "all", "round_to": 1},
                                 tolerance=0.02)  # fmt: skip
    assert count_macs_params(model, spec)[0] == macs0  # the search works on copies
    pruned = copy.deepcopy(model)
    prune_model(pruned, spec, ratio, scope="all", round_to=1, progress=False)
    assert count_macs_params(pruned, spec)[0] <= target
    lighter = [p for p in probes if p["ratio"] < ratio]
    assert lighter and all(p["value"] > target for p in lighter if p["ratio"] >= ratio - 0.02)
    with pytest.raises(ModelError, match="even pruning ratio"):
        search_ratio(model, spec, macs_measure(spec), 0.05 * macs0, {"scope": "all"})


def test_cli_prunes_the_hybrid_to_a_mac_budget_and_reloads(tmp_path, capsys) -> None:
    out = tmp_path / "h.pt"
    args = ["prune", "-m", HYBRID, "--target-macs", "0.8", "--scope", "all", "-o", str(out), "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget"]["met"] and data["prune"]["macs_after"] <= data["budget"]["target_macs"]
    assert data["prune"]["left_whole"]
    assert read_checkpoint(out)["transforms"][-1]["layers"]["stage1.0.gamma"]["type"] == "Parameter"
    assert load_model(HYBRID, out).model(torch.randn(1, 3, 112, 112)).shape == (1, 32)


def test_cli_refuses_a_model_with_nothing_safe_to_prune(tmp_path, capsys) -> None:
    # --scope inner on a model whose only free channels are residual streams or unsafe: one line, exit 1
    out = tmp_path / "x.pt"
    args = ["prune", "-m", HYBRID, "--ratio", "0.3", "--protect", "stage0", "--protect", "stage1",
            "--protect", "stage2.0", "--scope", "inner", "-o", str(out)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "nothing to prune" in err and "stage2.1.xca" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_cli_prunes_edgeface_xs(tmp_path) -> None:
    """The real hybrid of issue 11 through the CLI, as a user runs it (used to crash with an IndexError)."""
    out = tmp_path / "xs_p30.pt"
    env = {**os.environ, "PYTHONPATH": f"{XS_DIR}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "edgeface.cli.main", "prune", "--model", "edgeface_xs:edgeface_xs",
           "--weights", str(XS_DIR / "edgeface_xs.pt"), "--ratio", "0.3", "-o", str(out),
           "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Unwrapped parameters" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["prune"]["macs_reduction"] > 0.15
    left = {g["layer"] for g in data["prune"]["left_whole"]}
    assert any("xca.qkv" in n for n in left)  # attention heads are reported, not broken
    state = read_checkpoint(out)["state_dict"]
    assert state["model.stages.2.blocks.0.mlp.fc1.weight"].shape[0] < 400
    sys.path.insert(0, str(XS_DIR))
    try:
        pruned = load_model("edgeface_xs:edgeface_xs", out).model
    finally:
        sys.path.remove(str(XS_DIR))
    assert pruned(torch.randn(1, 3, 112, 112)).shape == (1, 512)


def test_round_to_keeps_every_pruned_width_a_multiple() -> None:
    from edgeface.compress.prune import _keep

    assert _keep(64, 45, 1, 8) == 48 and _keep(64, 43, 1, 8) == 40  # nearest multiple, not always down
    assert _keep(64, 2, 1, 8) == 8 and _keep(20, 20, 1, 8) == 20  # at least one unit; never grows a layer
    assert _keep(64, 45, 2, 8) == 44  # 2 groups: 44 per group x 2 = 88, a multiple of 8
    torch.manual_seed(0)
    model = MBF(blocks=(1, 1, 1, 1), input_size=48)
    spec = build_model("mbf")[1].replace(input_size=(48, 48))
    before = layer_shapes(model)
    prune_model(model, spec, 0.3, round_to=8, scope="all", progress=False)
    after = layer_shapes(model)
    changed = [n for n, s in after.items() if s["type"] == "Conv2d" and s["out"] != before[n]["out"]]
    assert len(changed) >= 4
    for name in changed:
        assert after[name]["out"] % 8 == 0, (name, after[name])
        if before[name]["groups"] == before[name]["in"] > 1:  # depthwise stays depthwise
            assert after[name]["groups"] == after[name]["in"] == after[name]["out"]
    assert model.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 512)


def test_latency_budget_is_measured_through_the_exported_artifact(lfw, tmp_path, capsys) -> None:
    out = tmp_path / "h.pt"
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((lfw / "aligned112").glob("*/*.jpg"))[:10]:
        (few / p.name).write_bytes(p.read_bytes())
    args = ["prune", "-m", HYBRID, "--target-latency-ms", "5", "-o", str(out)]
    assert main([*args, "--data", str(few)]) == 2  # refused before any export: too few faces to export
    assert "at least 72" in capsys.readouterr().err and not out.exists()
    # a budget the unpruned model already meets: measured (export + ONNX Runtime timing), then refused
    assert main([*args[:3], "--target-latency-ms", "100000", "--latency-precision", "fp32", "-o", str(out),
                 "--data", str(lfw)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "already runs in" in err and "onnxruntime (fp32)" in err and not out.exists()
    ms = float(err.split("already runs in ")[1].split(" ms")[0])
    assert 0.0 < ms < 1000.0


class _FlattenHead(nn.Module):
    """IResNet's ending in small: conv channels flattened channel-major into the embedding Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.BatchNorm2d(8), nn.PReLU(8))
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, 4, 1), nn.BatchNorm2d(16), nn.PReLU(16))
        self.fc = nn.Linear(16 * 7 * 7, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(self.stem(x)), 1))


def test_channels_flattened_into_the_head_are_pruned_with_it() -> None:
    torch.manual_seed(0)
    model, spec = _FlattenHead(), build_model("mbf")[1]
    x = torch.randn(2, 3, 112, 112)
    result = prune_model(model, spec, 0.5, round_to=1, progress=False)
    assert result.left_whole == []  # the flatten is a known channel mapping, not a blocker
    assert model.body[0].out_channels == 8 and model.fc.in_features == 8 * 49
    assert model.eval()(x).shape == (2, 32)
