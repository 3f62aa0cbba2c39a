"""A model quantized by edgeface.compress.quant exports with its own scales, not recalibrated ones."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeface.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from test_export_tflite import TINY  # noqa: E402  (the same small network)

SHARED = Path(__file__).parents[1].parent / "shared"
LFW = SHARED / "data" / "lfw"


def _tiny_and_calib(tmp_path: Path) -> tuple[str, Path]:
    """The small network as a module:factory reference, and 80 compression-split faces of 40 identities."""
    from edgeface.data.lfw import compression_split

    (tmp_path / "edgeface_tiny_learned.py").write_text(TINY)
    sys.path.insert(0, str(tmp_path))
    by_id: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by_id.setdefault(p.parent.name, []).append(p)
    calib = tmp_path / "calib"
    for ps in [ps[:2] for ps in by_id.values() if len(ps) >= 2][:40]:
        for p in ps:
            (calib / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, calib / p.parent.name / p.name)
    return "edgeface_tiny_learned:tiny", calib


def test_quantized_checkpoint_keeps_learned_scales(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from edgeface.compress.quant import ptq, quant_plan
    from edgeface.compress.quant.ptq import RECORD_ATTR
    from edgeface.models import checkpoint
    from edgeface.models.loading import load_model

    ref, calib = _tiny_and_calib(tmp_path)
    loaded = load_model(ref)
    images = sorted(calib.rglob("*.jpg"))
    qmodel = ptq(
        loaded.model, loaded.spec, images, bits="w8a8", calibration="minmax", num_images=32, progress=False
    )
    # stretch one layer's learned scales: recalibration would never produce these values
    first = next(m for m in qmodel.modules() if hasattr(m, "weight_scale"))
    with torch.no_grad():
        first.weight_scale.mul_(1.5)
    plan = quant_plan(qmodel)
    ckpt = checkpoint.save(tmp_path / "q.pt", qmodel, loaded.spec, ref, [getattr(qmodel, RECORD_ATTR)])

    out = tmp_path / "out"
    code = main(
        [
            "export",
            "-m",
            ref,
            "-w",
            str(ckpt),
            "--int8",
            "--format",
            "onnx",
            "--calib",
            str(calib),
            "-o",
            str(out),
            "--calib-images",
            "48",
            "--parity-images",
            "16",
            "--min-cosine",
            "0.9",
        ]
    )
    assert code == 0, capsys.readouterr().err[-1500:]
    model = onnx.load(str(out / "tinyface_int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [v for k, v in inits.items() if k.endswith(".weight_scale")]
    learned = [np.asarray(layer["weight_scale"], np.float32) for layer in plan["layers"].values()]
    assert len(scales) == len(learned)
    # GEMM-type convs carry the learned scale widened to the 7-bit grid (onnx.gemm_safe_weights): the same
    # range in half as many steps; depthwise convs keep it exactly
    for got in learned:
        assert any(
            s.shape == got.shape
            and (np.allclose(s, got, rtol=1e-6) or np.allclose(s, got * np.float32(127 / 63), rtol=1e-6))
            for s in scales
        )
    from edgeface.converters.metadata import read_onnx_spec

    assert read_onnx_spec(model).provenance["learned_quantization"] is True


def test_w6a6_checkpoint_keeps_its_per_layer_bits_in_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A w6a6 checkpoint keeps its first and last layers at 8 bits; the ONNX export must not cut them to 6."""
    from edgeface.compress.quant import ptq, quant_plan
    from edgeface.compress.quant.ptq import RECORD_ATTR
    from edgeface.models import checkpoint
    from edgeface.models.loading import load_model

    ref, calib = _tiny_and_calib(tmp_path)
    loaded = load_model(ref)
    images = sorted(calib.rglob("*.jpg"))
    qmodel = ptq(
        loaded.model, loaded.spec, images, bits="w6a6", calibration="mse", num_images=32, progress=False
    )
    plan = quant_plan(qmodel)
    bits = [layer["weight_bits"] for layer in plan["layers"].values()]
    assert 8 in bits and 6 in bits, bits
    ckpt = checkpoint.save(tmp_path / "q6.pt", qmodel, loaded.spec, ref, [getattr(qmodel, RECORD_ATTR)])
    out = tmp_path / "out6"
    args = ["export", "-m", ref, "-w", str(ckpt), "--w6a6", "--format", "onnx", "--calib", str(calib)]
    code = main(
        [*args, "-o", str(out), "--calib-images", "48", "--parity-images", "16", "--min-cosine", "0.9"]
    )
    assert code == 0, capsys.readouterr().err[-1500:]
    model = onnx.load(str(out / "tinyface_w6a6.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    codes = [np.abs(v.astype(np.int16)).max() for k, v in inits.items() if k.endswith(".weight_quantized")]
    learned = [np.asarray(layer["weight_scale"], np.float32) for layer in plan["layers"].values()]
    scales = [v for k, v in inits.items() if k.endswith(".weight_scale")]
    for want, got_bits in zip(learned, bits, strict=True):
        widen = np.float32(127 / 63) if got_bits == 8 else np.float32(1)  # 8-bit GEMM convs: 7-bit grid
        k = next(
            i
            for i, s in enumerate(scales)
            if s.shape == want.shape and (np.allclose(s, want, rtol=1e-6) or np.allclose(s, want * widen))
        )
        assert (codes[k] <= 31) == (got_bits == 6), (got_bits, codes[k])


def test_cli_quantized_checkpoint_exports_onnx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`edgeface quantize` writes the integer input/output grids into the checkpoint's spec; a float ONNX
    graph built from that spec (the fp32 artifact, the int8 export's speed-check twin) must not inherit them
    (it failed with "the spec declares an int8 input but the artifact takes float32")."""
    import json

    from edgeface.converters.metadata import read_onnx_spec

    ref, calib = _tiny_and_calib(tmp_path)
    ckpt = tmp_path / "q.pt"
    args = ["quantize", "-m", ref, "--calib", str(calib), "--num-images", "32", "--calibration", "minmax"]
    assert main([*args, "-o", str(ckpt)]) == 0, capsys.readouterr().err[-1500:]
    capsys.readouterr()
    out = tmp_path / "out"
    args = ["export", "-m", ref, "-w", str(ckpt), "--precision", "fp32,int8", "--format", "onnx"]
    args += ["--calib", str(calib), "--calib-images", "48", "--parity-images", "16", "--min-cosine", "0.9"]
    code = main([*args, "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    report = {r["precision"]: r for r in json.loads(captured.out)}
    assert (out / "tinyface_int8.onnx").is_file() and (out / "tinyface_fp32.onnx").is_file()
    assert report["int8"]["speedup_vs_fp32"] > 0  # the speed check against the float twin ran
    assert read_onnx_spec(onnx.load(str(out / "tinyface_fp32.onnx"))).input_quant is None
