"""PTQ on the real MobileFaceNet and real faces; structure and reload on the other architectures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeface.cli.main import main
from edgeface.cli.quantize_cmd import save_quantized
from edgeface.compress.quant import model_size_bytes, ptq, quant_plan
from edgeface.compress.quant.ptq import load_batches, pick_images
from edgeface.data.folders import compression_images
from edgeface.data.lfw import read_pairs, select_folds
from edgeface.models.loading import load_model


def _test_fold_images(lfw: Path, n: int) -> list[Path]:
    pairs = select_folds(read_pairs(lfw / "pairs.txt"), (6, 7, 8, 9, 10))
    names = list(dict.fromkeys(name for p in pairs[::40] for name in (p.left, p.right)))
    return [lfw / "aligned112" / name for name in names[:n]]


def _cosines(a: torch.nn.Module, b: torch.nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([F.cosine_similarity(a(x), b(x)) for x in batches])


@pytest.fixture(scope="module")
def mfn_w8a8(lfw: Path, mfn_weights: Path):
    fp32 = load_model("mobilefacenet", mfn_weights)
    calib = pick_images(compression_images(lfw), 32)
    q = ptq(fp32.model, fp32.spec, calib, bits="w8a8", calibration="mse", num_images=32, progress=False)
    test = load_batches(_test_fold_images(lfw, 32), fp32.spec)
    return fp32, q, test


def test_w8a8_ptq_follows_fp32_on_test_faces(mfn_w8a8) -> None:
    fp32, q, test = mfn_w8a8
    cos = _cosines(fp32.model, q, test)
    assert cos.numel() == 32
    assert cos.mean().item() >= 0.99, cos.mean().item()
    assert cos.min().item() >= 0.97
    # quantization really happened: outputs differ from fp32 and the model shrank about 4x
    assert cos.mean().item() < 0.99999
    assert model_size_bytes(q) < 0.3 * model_size_bytes(fp32.model)


def test_quant_plan_describes_every_layer(mfn_w8a8) -> None:
    _, q, _ = mfn_w8a8
    plan = quant_plan(q)
    assert plan["input_quantizer"] == "aq_input" and plan["output_quantizer"] == "aq_conv3"
    assert len(plan["layers"]) == 51  # conv1, 2 in dw_conv, 15 blocks x 3, conv2, gdconv, conv3
    for name, layer in plan["layers"].items():
        assert layer["weight_bits"] == 8 and len(layer["weight_scale"]) == q.get_submodule(name).out_channels
        assert layer["input"] is not None and layer["output"] is not None, name
    assert plan["layers"]["conv1.0"]["activation"] == "relu6"
    assert sum(n.startswith("aq_add") for n in plan["quantizers"]) == 12  # one per residual add


def test_save_reload_and_eval_cli(mfn_w8a8, tmp_path: Path, lfw: Path) -> None:
    fp32, q, test = mfn_w8a8
    out = tmp_path / "mfn_w8a8.pt"
    save_quantized(out, q, fp32.spec, "mobilefacenet", None, quant_plan(q))
    again = load_model("mobilefacenet", out)
    assert again.spec.precision == "w8a8" and again.spec.layer_bits["conv3"] == 8
    assert again.spec.output_quant is not None
    with torch.no_grad():
        assert torch.equal(again.model(test[0]), q(test[0]))
    # a tiny two-fold pairs file keeps `edgeface eval` on the reloaded checkpoint fast
    pairs = select_folds(read_pairs(lfw / "pairs.txt"), (6, 7))
    lines = ["2 2"]
    for fold in (6, 7):
        fp = [p for p in pairs if p.fold == fold]
        for p in [x for x in fp if x.same][:2] + [x for x in fp if not x.same][:2]:
            (a, i), (b, j) = (
                s.rsplit("_", 1) for s in (p.left[:-4].split("/")[1], p.right[:-4].split("/")[1])
            )
            lines.append(f"{a} {int(i)} {int(j)}" if p.same else f"{a} {int(i)} {b} {int(j)}")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    rc = main(
        [
            "eval",
            "-m",
            "mobilefacenet",
            "-w",
            str(out),
            "--pairs",
            str(tmp_path / "pairs.txt"),
            "--images",
            str(lfw / "aligned112"),
            "--folds",
            "1-2",
            "--json",
            str(tmp_path / "e.json"),
        ]
    )
    assert rc == 0 and (tmp_path / "e.json").is_file()


@pytest.mark.parametrize("name", ["iresnet18", "mbf", "tests._user_model_quant:small_face_net"])
def test_random_weight_models_quantize_and_reload(name: str, lfw: Path, tmp_path: Path) -> None:
    fp32 = load_model(name)
    images = compression_images(lfw)[:8]
    # few images and no bias correction: this checks structure and fidelity, not the best calibration
    q = ptq(
        fp32.model,
        fp32.spec,
        images[:4],
        bits="w8a8",
        calibration="minmax",
        progress=False,
        bias_correction=False,
    )
    test = load_batches(images[4:8], fp32.spec)
    cos = _cosines(fp32.model, q, test)
    assert cos.mean().item() > 0.9, cos.tolist()
    out = tmp_path / "q.pt"
    save_quantized(out, q, fp32.spec, name, None, quant_plan(q))
    again = load_model(name, out)
    with torch.no_grad():
        a, b = again.model(test[0]), q(test[0])
    assert a.shape == (4, fp32.spec.embedding_dim)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
