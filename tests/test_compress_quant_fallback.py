"""The measured float fallback of `edgeface quantize` on a plain CNN, and its export.

A CNN whose fully quantized embedding falls below the exporter's parity bar keeps the one fragile tensor's
writer and readers float (as the exporter does); everything before it stays integer: a layer kept float
near the end must not turn the residual blocks before it float one by one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeface.cli.main import main
from edgeface.compress.quant.fakequant import QuantConv2d, QuantLinear
from edgeface.compress.quant.ptq import load_batches, prepare_float, ptq
from edgeface.models.loading import load_model

MODEL = "tests._quant_models:fragile_tail_net"


@pytest.fixture(scope="module")
def net():
    return load_model(MODEL, None)


@pytest.fixture(scope="module")
def batches(net, lfw: Path) -> list[torch.Tensor]:
    from edgeface.data.folders import compression_images

    return load_batches(compression_images(lfw)[:48], net.spec, batch_size=24)


def _cosine(q: torch.nn.Module, net, x: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cosine_similarity(q(x), net.model(x)).mean().item()


def test_a_layer_kept_float_at_the_end_leaves_the_blocks_before_it_integer(net) -> None:
    _, everything = prepare_float(net.model, (3, 112, 112))
    _, kept = prepare_float(net.model, (3, 112, 112), ["expand.0", "gdc"])
    assert "gdc" in everything.layers and "expand.0" in everything.layers
    assert set(kept.layers) == set(everything.layers) - {"expand.0", "gdc"}


def test_the_fragile_tensor_is_found_and_kept_float(net, batches) -> None:
    x = batches[-1]
    calib = batches[:-1]
    plain = ptq(net.model, net.spec, calib, progress=False, fallback=0.0)
    assert _cosine(plain, net, x) < 0.95  # the model is as fragile as it is meant to be
    q = ptq(net.model, net.spec, calib, progress=False)
    assert set(q.edgeface_quant["fallback"]) == {"expand.0", "gdc"}
    assert _cosine(q, net, x) > 0.99
    quantized = {n for n, m in q.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}
    assert quantized == set(prepare_float(net.model, (3, 112, 112))[1].layers) - {"expand.0", "gdc"}
    # a layer class in layer_bits sets bits and leaves the fallback its choice; a named layer is the user's
    by_class = ptq(net.model, net.spec, calib, progress=False, layer_bits={"Conv2d": 8})
    assert set(by_class.edgeface_quant["fallback"]) == {"expand.0", "gdc"}
    named = ptq(net.model, net.spec, calib, progress=False, layer_bits={"gdc": 8})
    assert "gdc" not in named.edgeface_quant.get("fallback", {})


def test_the_checkpoint_exports_with_its_float_layers(lfw: Path, tmp_path: Path, capsys) -> None:
    from edgeface.data.folders import compression_images

    faces = tmp_path / "faces"
    faces.mkdir()
    for p in compression_images(lfw)[:24]:
        (faces / p.name).symlink_to(p)
    ckpt, out = tmp_path / "q.pt", tmp_path / "art"
    assert (
        main(
            ["quantize", "-m", MODEL, "--calib", str(faces), "--num-images", "16", "--quiet", "-o", str(ckpt)]
        )
        == 0
    )
    capsys.readouterr()
    args = ["export", "--int8", "--format", "onnx,tflite", "-m", MODEL, "-w", str(ckpt), "--calib", str(lfw)]
    assert (
        main([*args, "--calib-images", "64", "--parity-images", "16", "--no-pack", "-o", str(out), "--json"])
        == 0
    )
    reports = {r["format"]: r for r in json.loads(capsys.readouterr().out)}
    for fmt, ops in (("onnx", ["Conv"]), ("tflite", ["CONV_2D", "DEPTHWISE_CONV_2D"])):
        report = reports[fmt]
        spec = json.loads(Path(report["path"] + ".json").read_text())
        assert spec["provenance"]["learned_quantization"]
        assert sum(report["float_ops"][op]["count"] for op in ops) == 2  # expand.0 and gdc, nothing else
        assert all("quantized checkpoint" in report["float_ops"][op]["why"] for op in ops)
        assert report["parity"]["mean_cosine"] > 0.99
