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
from edgeface.errors import EdgefaceError

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


# ------------------------------------------------------------------ CNN-transformer hybrids (Linear layers)
HYBRID = "tests._quant_models:tiny_hybrid"
HYBRID_FLOAT_LAYER = "block2.fc2"  # left float in the checkpoint, as edgeface quantize's fallback leaves one


@pytest.fixture(scope="module")
def hybrid_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(checkpoint, calibration folder, quant_plan) of the tiny hybrid through `edgeface quantize` (PTQ,
    per-site smoothing, one Linear kept float)."""
    from edgeface.compress.quant import quant_plan
    from edgeface.models.loading import load_model

    tmp = tmp_path_factory.mktemp("hybrid")
    _, calib = _tiny_and_calib(tmp)
    ckpt = tmp / "q.pt"
    args = ["quantize", "-m", HYBRID, "--calib", str(calib), "--num-images", "16", "--quiet"]
    assert main([*args, "--keep-float", HYBRID_FLOAT_LAYER, "-o", str(ckpt)]) == 0
    return ckpt, calib, quant_plan(load_model(HYBRID, ckpt).model)


def _export(model: str, ckpt: Path, calib: Path, out: Path, fmt: str, capsys: pytest.CaptureFixture) -> dict:
    """`edgeface export --int8` of a checkpoint at the default parity bar (0.99); its JSON report row."""
    import json

    capsys.readouterr()
    args = ["export", "-m", model, "-w", str(ckpt), "--int8", "--format", fmt, "--calib", str(calib)]
    code = main([*args, "-o", str(out), "--calib-images", "48", "--parity-images", "16", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    (row,) = json.loads(captured.out)
    return row


def _onnx_qparams(model: onnx.ModelProto) -> tuple[dict[str, list[str]], set[tuple[float, int]]]:
    """(tensor -> the op types reading it, {(scale, zero point)} of every QuantizeLinear) of an artifact."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    grids = {
        (round(float(inits[n.input[1]]), 9), int(inits[n.input[2]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    return readers, grids


def _uint8_grid(q: dict) -> tuple[float, int]:
    """The uint8 grid an exporter writes for a signed int8 quantizer: same step, zero point + 128."""
    return round(float(q["scale"]), 9), int(q["zero_point"]) - int(q["quant_min"])


def test_hybrid_checkpoint_exports_onnx_with_its_learned_scales(
    hybrid_ckpt: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """LayerNorm -> Linear, GELU -> Linear, attention -> Linear: every Linear (a Gemm in ONNX) keeps its
    learned per-channel scales and reads its learned input grid; what the checkpoint keeps float (the convs
    no integer op reads, the kept Linear, the Linears' outputs, the image) stays float."""
    ckpt, calib, plan = hybrid_ckpt
    record = plan["record"]
    assert record["smoothed"], "the test model must exercise the LayerNorm outlier migration"
    # a Linear -> GELU writes float; the GELU output's quantizer is the next Linear's input, not its output
    assert plan["layers"]["block1.fc1"]["output"] is None
    assert plan["layers"]["block1.fc2"]["input_quantizer"] == "aq_block1_act"
    row = _export(HYBRID, ckpt, calib, tmp_path / "out", "onnx", capsys)
    assert row["parity"]["mean_cosine"] >= 0.99
    assert HYBRID_FLOAT_LAYER in row["checkpoint_float_layers"]
    assert "stem.0" in row["checkpoint_float_layers"]
    model = onnx.load(str(row["path"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [v for k, v in inits.items() if k.endswith(".weight_scale")]
    assert len(scales) == len(plan["layers"]) == row["per_channel_layers"]  # the kept Linear has none
    # Gemms run on the 7-bit grid (ORT without VNNI): the learned range in half the steps, and the report
    # names every layer that moved so that it can be quantized at 7 bits instead
    assert sorted(row["learned_weights_widened"]["layers"]) == sorted(plan["layers"])
    assert row["learned_weights_widened"]["fix"].endswith("--layer-bits Linear=7")  # by class: one entry
    for layer in plan["layers"].values():
        want = np.asarray(layer["weight_scale"], np.float32) * np.float32(127 / 63)
        assert any(s.shape == want.shape and np.allclose(s, want, rtol=1e-6) for s in scales)
    readers, grids = _onnx_qparams(model)
    for name, layer in plan["layers"].items():
        assert _uint8_grid(layer["input"]) in grids, name
    gemm_outputs = [n.output[0] for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemm_outputs) == len(plan["layers"]) + 1
    quantized = [o for o in gemm_outputs if "QuantizeLinear" in readers.get(o, [])]
    assert quantized == [gemm_outputs[-1]]  # only the embedding, as in the checkpoint (aq_fc)
    from edgeface.converters.metadata import read_onnx_spec

    spec = read_onnx_spec(model)
    assert spec.input_quant is None  # no input quantizer in the checkpoint: float image
    assert spec.provenance["checkpoint_float_layers"] == row["checkpoint_float_layers"]  # the file says too
    # and the text report, without --json
    args = ["export", "-m", HYBRID, "-w", str(ckpt), "--int8", "--format", "onnx", "--calib", str(calib)]
    assert main([*args, "-o", str(tmp_path / "text"), "--calib-images", "48", "--parity-images", "16"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "layers the checkpoint keeps float" in x)
    assert HYBRID_FLOAT_LAYER in line and "stem.0" in line


def test_learned_plan_that_does_not_fit_the_onnx_graph_is_refused_in_one_line(
    hybrid_ckpt: tuple[Path, Path, dict],
) -> None:
    from edgeface.converters import learned
    from edgeface.converters.onnx_float import export_float_onnx

    from edgeface.errors import ModelError
    from edgeface.models.loading import load_model

    ckpt, _, plan = hybrid_ckpt
    loaded = load_model(HYBRID, ckpt)
    found = learned.plan_from_quantized(loaded.model, loaded.spec)  # fits: no error
    proto = export_float_onnx(found["model"], loaded.spec.input_size)
    order = found["layers"]
    with pytest.raises(ModelError, match=f"has {len(order) - 1} weight layers but its ONNX graph"):
        learned.match_onnx(proto, plan, order[:-1])
    name = next(iter(plan["layers"]))
    wrong = {**plan, "layers": {**plan["layers"], name: {**plan["layers"][name], "weight_scale": [1.0] * 3}}}
    with pytest.raises(EdgefaceError, match=f"learned scales of {name} \\(3 channels\\) do not fit"):
        learned.match_onnx(proto, wrong, order)


CHANNELS_LAST = """
import torch
from torch import nn

EDGEFACE_SPEC = {"name": "clface", "input_size": [32, 32], "layout": "NCHW", "channel_order": "RGB",
                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "embedding_dim": 16}


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 4, 4)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 8)
        self.head = nn.Linear(8 * 8 * 8, 16)

    def forward(self, x):
        y = self.stem(x).permute(0, 2, 3, 1)
        y = self.fc2(torch.relu(self.fc1(self.norm(y))))
        return self.head(y.flatten(1))


def channels_last():
    return ChannelsLast().eval()
"""


def test_linear_left_as_matmul_keeps_its_scales_on_the_output_axis(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A graph with a free batch axis keeps a channels-last Linear as MatMul(x, W^T) + Add: its weight is
    [in, out], the transpose of torch's, so the learned per-output-channel scales belong on axis 1."""
    from edgeface.compress.quant import quant_plan
    from edgeface.models.loading import load_model

    (tmp_path / "edgeface_channels_last.py").write_text(CHANNELS_LAST)
    ref = "edgeface_channels_last:channels_last"
    _, calib = _tiny_and_calib(tmp_path)
    ckpt = tmp_path / "q.pt"
    args = ["quantize", "-m", ref, "--calib", str(calib), "--num-images", "16", "--quiet", "-o", str(ckpt)]
    assert main(args) == 0
    plan = quant_plan(load_model(ref, ckpt).model)
    fc1 = plan["layers"]["fc1"]
    assert fc1["output"] is not None  # its ReLU output feeds the integer fc2
    row = _export(ref, ckpt, calib, tmp_path / "out", "onnx", capsys)
    model = onnx.load(str(row["path"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2, [n.op_type for n in model.graph.node]
    weight_dq = {n.output[0]: n for n in model.graph.node if n.name.endswith("_wDQ")}
    dq = weight_dq[matmuls[0].input[1]]
    assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    assert inits[dq.input[0]].shape == (8, 24)
    want = np.asarray(fc1["weight_scale"], np.float32) * np.float32(127 / 63)
    np.testing.assert_allclose(inits[dq.input[1]], want, rtol=1e-6)
    _, grids = _onnx_qparams(model)
    assert _uint8_grid(fc1["output"]) in grids  # on the Add after the MatMul, not on the bias-free product
