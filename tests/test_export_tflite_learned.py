"""A checkpoint of `edgeface quantize` exports to TFLite with its own scales, not recalibrated ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from edgeface.converters import tflite_learned as tl

from edgeface.cli.main import main
from edgeface.errors import EdgefaceError

sys.path.insert(0, str(Path(__file__).parent))
from test_export_learned import _tiny_and_calib  # noqa: E402  (the same small network and faces)


def test_tflite_keeps_learned_scales(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from edgeface.compress.quant import ptq, quant_plan
    from edgeface.compress.quant.ptq import RECORD_ATTR
    from edgeface.models import checkpoint
    from edgeface.models.loading import load_model

    ref, calib = _tiny_and_calib(tmp_path)
    loaded = load_model(ref)
    qmodel = ptq(
        loaded.model,
        loaded.spec,
        sorted(calib.rglob("*.jpg")),
        bits="w8a8",
        calibration="minmax",
        num_images=32,
        progress=False,
    )
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
