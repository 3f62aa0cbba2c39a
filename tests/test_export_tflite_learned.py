"""A checkpoint of `edgeface quantize` exports to TFLite with its own scales, not recalibrated ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from edgeface.converters import tflite_learned as tl

from edgeface.cli.main import main
from edgeface.errors import EdgefaceError, ModelError

sys.path.insert(0, str(Path(__file__).parent))
import test_export_learned  # noqa: E402
from test_export_learned import HYBRID, HYBRID_FLOAT_LAYER, _export, _tiny_and_calib  # noqa: E402

hybrid_ckpt = test_export_learned.hybrid_ckpt  # the same fixture: the hybrid through `edgeface quantize`

PRELU = "tests._quant_models:prelu_net_112x96"


def _tiny_ptq(tmp_path: Path, bits: str, **options: object) -> tuple[str, Path, object, object]:
    """(model reference, calibration folder, the loaded fp32 model, the tiny net's PTQ fake-quant model)."""
    from edgeface.compress.quant import ptq
    from edgeface.models.loading import load_model

    ref, calib = _tiny_and_calib(tmp_path)
    loaded = load_model(ref)
    images = sorted(calib.rglob("*.jpg"))
    qmodel = ptq(
        loaded.model,
        loaded.spec,
        images,
        bits=bits,
        calibration="minmax",
        num_images=32,
        progress=False,
        **options,
    )
    return ref, calib, loaded, qmodel


def test_tflite_keeps_learned_scales(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from edgeface.compress.quant import quant_plan
    from edgeface.compress.quant.ptq import RECORD_ATTR
    from edgeface.models import checkpoint

    ref, calib, loaded, qmodel = _tiny_ptq(tmp_path, "w8a8")
    # stretch one layer's weight scales and one activation scale: recalibration would never produce these
    first = next(m for m in qmodel.modules() if hasattr(m, "weight_scale"))
    with torch.no_grad():
        first.weight_scale.mul_(1.5)
    plan = quant_plan(qmodel)
    stretched = plan["layers"][next(iter(plan["layers"]))]["output_quantizer"]
    with torch.no_grad():
        qmodel.get_submodule(stretched).scale.mul_(1.25)
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
            "tflite",
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
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    (row,) = json.loads(captured.out)
    assert row["parity"]["mean_cosine"] >= 0.9 and "learned" in row["quantizer"]
    model = tl.read((out / "tinyface_int8.tflite").read_bytes())
    graph = model.subgraphs[0]
    main_ops, _ = tl.weighted_ops(model)
    layers = list(plan["layers"].values())
    assert len(main_ops) == len(layers) == 5

    def quant(i: int) -> tuple[float, int]:
        q = graph.tensors[i].quantization
        return float(q.scale[0]), int(q.zeroPoint[0])

    for k, layer in zip(main_ops, layers, strict=True):
        op = graph.operators[k]
        w = graph.tensors[op.inputs[1]].quantization
        np.testing.assert_allclose(w.scale, layer["weight_scale"], rtol=1e-6)  # learned, per channel
        if layer["output"] is not None:  # the activation scale and zero point of the checkpoint
            s, z = quant(op.outputs[0])
            assert z == layer["output"]["zero_point"]
            np.testing.assert_allclose(s, layer["output"]["scale"], rtol=1e-6)
        # the int32 bias sits on input scale x weight scale, the integer kernels' invariant
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = graph.tensors[op.inputs[2]].quantization
            np.testing.assert_allclose(b.scale, quant(op.inputs[0])[0] * np.asarray(w.scale), rtol=1e-6)
    s, z = quant(graph.inputs[0])
    assert z == plan["quantizers"]["aq_input"]["zero_point"]
    np.testing.assert_allclose(s, plan["quantizers"]["aq_input"]["scale"], rtol=1e-6)
    add = next(op for op in graph.operators if tl.op_name(model, op) == "ADD")
    np.testing.assert_allclose(quant(add.outputs[0])[0], plan["quantizers"]["aq_add"]["scale"], rtol=1e-6)

    # an 8-bit checkpoint asked for w6a6: a clear error, nothing written (its scales are 8-bit grids)
    code = main(
        ["export", "-m", ref, "-w", str(ckpt), "--w6a6", "--format", "tflite", "--calib", str(calib)]
        + ["-o", str(tmp_path / "o6"), "--calib-images", "48", "--parity-images", "16"]
    )
    assert code == 2 and "quantized at 8 bits" in capsys.readouterr().err
    assert not (tmp_path / "o6").exists() or list((tmp_path / "o6").iterdir()) == []

    # a plan that does not fit the graph is refused with a clear error, not exported wrongly
    from edgeface.converters.tflite import float_tflite

    float_data = float_tflite(loaded.model, loaded.spec)
    short = {**plan, "layers": dict(list(plan["layers"].items())[:-1])}
    with pytest.raises(EdgefaceError, match="4 weight layers but its TFLite graph 5"):
        tl.match_plan(float_data, short)
    wrong = {**plan, "layers": dict(plan["layers"])}
    name = next(iter(wrong["layers"]))
    wrong["layers"][name] = {**wrong["layers"][name], "weight_scale": [1.0] * 3}
    with pytest.raises(EdgefaceError, match="do not fit TFLite op CONV_2D #1"):
        tl.match_plan(float_data, wrong)


def test_read_pulls_constants_stored_after_the_flatbuffer_back_inline(tmp_path: Path) -> None:
    """ai-edge-quantizer stores a large model's constants after the flatbuffer (Buffer.offset/size); the
    flatbuffer surgery must keep them (an iresnet18 int8 export once lost them and failed to load)."""
    import numpy as np
    import torch
    from edgeface.converters import tflite_learned as tl
    from edgeface.converters.tflite import float_tflite
    from torch import nn

    from edgeface.spec import ModelSpec

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()).eval()
    data = float_tflite(net, ModelSpec(name="t", input_size=(16, 16), embedding_dim=8))
    model = tl.read(data)
    k = max(
        range(len(model.buffers)),
        key=lambda i: 0 if model.buffers[i].data is None else len(model.buffers[i].data),
    )
    payload = np.asarray(model.buffers[k].data, np.uint8).copy()
    model.buffers[k].data, model.buffers[k].offset, model.buffers[k].size = None, 1, payload.size
    head = tl.write(model)  # the offset field has a fixed width: its value does not change the length
    model.buffers[k].offset = len(head)
    moved = tl.write(model) + payload.tobytes()
    assert len(moved) == len(head) + payload.size
    again = tl.read(moved)
    assert np.array_equal(np.asarray(again.buffers[k].data, np.uint8), payload)
    assert not again.buffers[k].offset


def _int8_grid(model: object, i: int) -> tuple[float, int]:
    q = model.subgraphs[0].tensors[i].quantization
    return round(float(q.scale[0]), 9), int(q.zeroPoint[0])


def _grid(q: dict) -> tuple[float, int]:
    return round(float(q["scale"]), 9), int(q["zero_point"])


def _on(got: tuple[float, int], grids: list[tuple[float, int]]) -> bool:
    """`got` is one of `grids` (ai-edge-quantizer writes the float32 of the range we give it)."""
    return any(np.isclose(got[0], s, rtol=1e-5) and got[1] == z for s, z in grids)


def test_prelu_net_residual_add_is_told_from_the_prelu_rewrite_adds(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Trained-like PReLU slopes (outside [0, 1]) are rewritten as a x + (1 - a) relu(x) for TFLite, one
    ADD each: the checkpoint's one residual add quantizer still lands on the residual ADD, and each PReLU's
    ADD carries its layer's output quantizer."""
    from edgeface.compress.quant import quant_plan
    from edgeface.models.loading import load_model

    _, calib = _tiny_and_calib(tmp_path)
    ckpt = tmp_path / "q.pt"
    args = ["quantize", "-m", PRELU, "--calib", str(calib), "--num-images", "16", "--quiet", "-o", str(ckpt)]
    assert main(args) == 0
    plan = quant_plan(load_model(PRELU, ckpt).model)
    (add_q,) = [q for q in plan["quantizers"] if q.startswith("aq_add")]
    row = _export(PRELU, ckpt, calib, tmp_path / "out", "tflite", capsys)
    assert row["parity"]["mean_cosine"] >= 0.99
    model = tl.read(Path(row["path"]).read_bytes())
    graph = model.subgraphs[0]
    adds = [op for op in graph.operators if tl.op_name(model, op) == "ADD"]
    (residual,) = tl.model_adds(model)
    assert len(adds) > 1  # the PReLU rewrite's ADDs are there, and not taken for additions of the model
    assert _on(_int8_grid(model, residual.outputs[0]), [_grid(plan["quantizers"][add_q])])
    prelu_outputs = [_grid(layer["output"]) for layer in plan["layers"].values() if layer["output"]]
    for op in adds:
        if op is not residual:
            assert _on(_int8_grid(model, op.outputs[0]), prelu_outputs)


def test_prelu_checkpoint_exports_tflite_when_tensors_beside_its_rewrite_stay_float(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Where a conv feeding a PReLU stays float (the checkpoint's choice here; the sensitivity pass makes it
    on trained models), the quantizer puts QUANTIZE / DEQUANTIZE ops beside the PReLU rewrite; its slope
    convs are still told from the model's layers (they used to count as layers: "cannot place the weight
    scales", exit 2, nothing written)."""
    model = "tests._quant_models:hswish_prelu_net"
    _, calib = _tiny_and_calib(tmp_path)
    ckpt = tmp_path / "q.pt"
    args = ["quantize", "-m", model, "--calib", str(calib), "--num-images", "16", "--quiet", "-o", str(ckpt)]
    args += ["--keep-float", "body.1.0"]
    assert main(args) == 0
    row = _export(model, ckpt, calib, tmp_path / "out", "tflite", capsys)
    assert row["parity"]["mean_cosine"] >= 0.99
    graph = tl.read(Path(row["path"]).read_bytes())
    ops = [tl.op_name(graph, op) for op in graph.subgraphs[0].operators]
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(ops)  # the case under test: casts inside the graph
    main_ops, slopes = tl.weighted_ops(graph)
    # 4 convs + fc; one slope conv per PReLU: both are max(x, a x), their slopes above 1 negated around
    # them (a checkpoint used to keep a x + (1 - a) relu(x), two slope convs each)
    assert (len(main_ops), len(slopes)) == (5, 2)
    data = Path(row["path"]).read_bytes()
    with pytest.raises(ModelError):  # a plan that cannot be placed is our failure (exit 1), not the user's
        tl.impose_weights(data, data, [])


def test_w6a6_prelu_checkpoint_tells_slope_convs_behind_grid_clamps(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """w6a6 puts a grid clamp after every slope conv of the PReLU rewrite a x + (1 - a) relu(x), so the ADD
    reads clamps, not the convs: the slope convs used to count as layers ("quantized TFLite graph has 23
    weighted ops ... the plan 11: cannot place the weight scales") and the TFLite artifact was lost."""
    _, calib = _tiny_and_calib(tmp_path)
    ckpt = tmp_path / "q.pt"
    args = ["quantize", "-m", PRELU, "--bits", "w6a6", "--calib", str(calib), "--num-images", "16"]
    assert main([*args, "--quiet", "-o", str(ckpt)]) == 0
    capsys.readouterr()
    args = ["export", "-m", PRELU, "-w", str(ckpt), "--w6a6", "--format", "tflite", "--calib", str(calib)]
    args += ["-o", str(tmp_path / "out"), "--calib-images", "48", "--parity-images", "16", "--json"]
    code = main([*args, "--min-cosine", "0.5", "--no-pack"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    (row,) = json.loads(captured.out)
    model = tl.read(Path(row["path"]).read_bytes())
    main_ops, slopes = tl.weighted_ops(model)
    # 6 convs + fc; one slope conv for each of the 3 PReLUs between convs (max form, channels negated),
    # two for each of the 2 others (a residual Add, a Linear behind a view read them)
    assert (len(main_ops), len(slopes)) == (7, 7)


def test_hybrid_checkpoint_exports_tflite_with_its_learned_input_grids(
    hybrid_ckpt: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every int8 FULLY_CONNECTED reads the grid its Linear's input quantizer learned (a LayerNorm's,
    GELU's or attention's output, through reshapes), per-channel weights are the learned ones, and the
    report names the layers the checkpoint left float."""
    ckpt, calib, plan = hybrid_ckpt
    row = _export(HYBRID, ckpt, calib, tmp_path / "out", "tflite", capsys)
    assert row["parity"]["mean_cosine"] >= 0.99 and "learned" in row["quantizer"]
    assert HYBRID_FLOAT_LAYER in row["checkpoint_float_layers"]
    model = tl.read(Path(row["path"]).read_bytes())
    graph = model.subgraphs[0]
    inputs = [_grid(layer["input"]) for layer in plan["layers"].values()]
    learned_w = [np.asarray(layer["weight_scale"], np.float32) for layer in plan["layers"].values()]
    int8_fc = 0
    for op in graph.operators:
        w = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
        if tl.op_name(model, op) != "FULLY_CONNECTED" or w is None or w.type != 9:  # 9: INT8
            continue
        int8_fc += 1
        assert _on(_int8_grid(model, op.inputs[0]), inputs)
        assert any(
            np.allclose(w.quantization.scale, s, rtol=1e-6)
            for s in learned_w
            if s.size == len(w.quantization.scale)
        )
    assert int8_fc >= 1


def test_a_dead_channel_with_a_tiny_learned_scale_keeps_its_bias() -> None:
    """All-zero weights get the smallest learned step (EdgeFace-XS's dead attention block: 1e-8); on the
    input's step its bias is far beyond int32. The channel must still output its bias: the weight scale
    rises until the bias fits, and a saturating bias never wraps to the other sign."""
    import torch
    from edgeface.converters.tflite import build_tflite, float_tflite
    from torch import nn

    from edgeface.spec import ModelSpec

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[0].bias[1] = 5.0
    spec = ModelSpec(name="t", input_size=(16, 16), embedding_dim=4)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    quant, _, _ = build_tflite(net, spec, "int8", [x])
    learned = np.full(4, 1e-8, np.float32)
    learned[[0, 2, 3]] = [float(net[0].weight[c].abs().max()) / 127 for c in (0, 2, 3)]
    out, _ = tl.impose_weights(quant, float_tflite(net, spec), [(learned, 8)])
    model = tl.read(out)
    graph = model.subgraphs[0]
    (conv,) = [op for op in graph.operators if tl.op_name(model, op) == "CONV_2D"]
    bias = graph.tensors[conv.inputs[2]]
    real = tl.buffer_array(model, bias, np.int32).reshape(-1) * np.asarray(bias.quantization.scale)
    np.testing.assert_allclose(real, net[0].bias.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert graph.tensors[conv.inputs[1]].quantization.scale[1] > 1e-8


def test_w6a6_checkpoint_keeps_its_float_layer_float_past_the_clamps(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A w6a6 graph gains a clamp after each held tensor; the checkpoint's float layers are op indices of
    the graph before them, so they must move with the ops (they used to land on whatever op took the old
    index: here a clamp, leaving the head's depthwise conv integer)."""
    from edgeface.compress.quant.ptq import RECORD_ATTR
    from edgeface.models import checkpoint

    ref, calib, loaded, qmodel = _tiny_ptq(tmp_path, "w6a6", keep_float=["head.0"], fallback=0.0)
    ckpt = checkpoint.save(tmp_path / "q6.pt", qmodel, loaded.spec, ref, [getattr(qmodel, RECORD_ATTR)])
    out = tmp_path / "out"
    args = ["export", "-m", ref, "-w", str(ckpt), "--w6a6", "--format", "tflite", "--calib", str(calib)]
    args += ["-o", str(out), "--calib-images", "48", "--parity-images", "16", "--min-cosine", "0.5"]
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    model = tl.read((out / "tinyface_w6a6.tflite").read_bytes())
    graph = model.subgraphs[0]
    assert any(tl.tensor_name(t).endswith(tl.CLAMP_SUFFIX) for t in graph.tensors)  # clamps moved the ops
    main_ops, _ = tl.weighted_ops(model)
    kinds = [tl.op_name(model, graph.operators[k]) for k in main_ops]
    float_weights = [graph.tensors[graph.operators[k].inputs[1]].type == 0 for k in main_ops]  # FLOAT32
    assert kinds[3] == "DEPTHWISE_CONV_2D" and float_weights == [False, False, False, True, False], (
        kinds,
        float_weights,
    )
