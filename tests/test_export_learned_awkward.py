"""Checkpoints of awkward user models export with their learned scales: a ViT built from
nn.TransformerEncoder (its Linears now integer), a layer forward calls twice (shared weights), and an
attention module quantize keeps opaque (float). Parity is against the checkpoint's own fake-quant forward
(the exporter's reference), and the checkpoint against fp32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from edgeface.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from test_export_learned import _export, _onnx_qparams, _tiny_and_calib, _uint8_grid  # noqa: E402

VIT = "tests._awkward_models:tiny_face_transformer"
SHARED_CONV = "tests._awkward_models:shared_conv_net"
OPAQUE = "tests._awkward_models:bias_kv_attention_net"


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 aligned faces of 40 compression-split identities (the export minimum is 72)."""
    return _tiny_and_calib(tmp_path_factory.mktemp("awkward"))[1]


def _quantize(model: str, calib: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[dict, str]:
    """`edgeface quantize --json` of `model`: (its JSON report, its stderr)."""
    capsys.readouterr()
    args = ["quantize", "-m", model, "--calib", str(calib), "--num-images", "16", "--quiet", "--json"]
    assert main([*args, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _plan_and_fp32_cosine(model: str, ckpt: Path, calib: Path) -> tuple[dict, float]:
    """(quant_plan of the checkpoint, mean cosine of its fake-quant embeddings to the fp32 model's)."""
    from edgeface.compress.quant import quant_plan
    from edgeface.compress.quant.ptq import load_batches
    from edgeface.models.loading import load_model

    fp32, q = load_model(model), load_model(model, ckpt)
    x = load_batches(sorted(calib.rglob("*.jpg"))[:8], fp32.spec)[0]
    with torch.no_grad():
        cosine = F.cosine_similarity(fp32.model(x), q.model(x)).mean().item()
    return quant_plan(q.model), cosine


def test_transformer_encoder_checkpoint_exports_with_integer_attention(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """nn.TransformerEncoder used to stay one opaque float op, and its checkpoint did not export (6 Linear
    nodes in the graph, 2 layers in the checkpoint). Now its projections and feed-forward Linears are
    integer layers, and both formats carry their learned scales."""
    report, err = _quantize(VIT, calib, tmp_path / "v.pt", capsys)
    assert report["opaque_float_modules"] == [] and "opaque op" not in err, err
    plan, fp32_cosine = _plan_and_fp32_cosine(VIT, tmp_path / "v.pt", calib)
    encoder = {n for n in plan["layers"] if n.startswith("encoder.")}
    assert encoder == {
        f"encoder.layers.0.{n}" for n in ("self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2")
    }
    assert fp32_cosine > 0.98
    for fmt in ("onnx", "tflite"):
        row = _export(VIT, tmp_path / "v.pt", calib, tmp_path / fmt, fmt, capsys)
        assert row["parity"]["mean_cosine"] >= 0.99 and row["parity"]["min_cosine"] >= 0.98, (fmt, row)
        assert row["per_channel_layers"] == len(plan["layers"]), fmt  # every learned layer is integer


def test_shared_layer_checkpoint_gives_each_call_its_own_grids(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A conv applied to the image and its mirror image, a block applied twice: one set of weight scales,
    but each call reads and writes its own grid. The plan lists the calls; the ONNX export writes every
    call's output grid (it gave both calls the last call's grids: min parity 0.96)."""
    _quantize(SHARED_CONV, calib, tmp_path / "s.pt", capsys)
    plan, fp32_cosine = _plan_and_fp32_cosine(SHARED_CONV, tmp_path / "s.pt", calib)
    calls = plan["layers"]["block.0"]["calls"]
    assert len(calls) == 2 and calls[0]["output_quantizer"] != calls[1]["output_quantizer"]
    assert len(plan["layers"]["down"]["calls"]) == 1
    assert fp32_cosine > 0.98
    row = _export(SHARED_CONV, tmp_path / "s.pt", calib, tmp_path / "onnx", "onnx", capsys)
    assert row["parity"]["min_cosine"] >= 0.99, row["parity"]
    _, grids = _onnx_qparams(onnx.load(str(row["path"])))
    for call in calls:
        assert _uint8_grid(call["output"]) in grids
    row = _export(SHARED_CONV, tmp_path / "s.pt", calib, tmp_path / "tflite", "tflite", capsys)
    assert row["parity"]["min_cosine"] >= 0.99, row["parity"]


def test_opaque_module_checkpoint_exports_with_that_module_float(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A MultiheadAttention quantize cannot write out (add_bias_kv) stays float: quantize warns, and the
    export keeps its ops float, names it in the report, and carries the other layers' scales."""
    report, err = _quantize(OPAQUE, calib, tmp_path / "b.pt", capsys)
    assert [r["name"] for r in report["opaque_float_modules"]] == ["attn"] and "warning:" in err
    plan, _ = _plan_and_fp32_cosine(OPAQUE, tmp_path / "b.pt", calib)
    for fmt in ("onnx", "tflite"):
        row = _export(OPAQUE, tmp_path / "b.pt", calib, tmp_path / fmt, fmt, capsys)
        assert "opaque op" in row["checkpoint_float_layers"]["attn"], row["checkpoint_float_layers"]
        assert row["parity"]["mean_cosine"] >= 0.99, (fmt, row["parity"])
        assert row["per_channel_layers"] == len(plan["layers"]), fmt
    assert np.isfinite(row["parity"]["min_cosine"])
