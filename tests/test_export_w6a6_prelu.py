"""`edgeface quantize` checkpoints of a PReLU net with trained-like slopes (negative and above 1) through
`edgeface export`, both formats. quantize range-equalizes the PReLU layers before it learns any grid
(torch_rewrite.equalize_prelus); the PReLU-as-max grid shared by x, a x and the max is 8-bit in w6a6
where a slope lies beyond [-1, 1] (a 6-bit rounding of x reached the output |a| times over), and so is
the checkpoint's grid of that PReLU's output (ptq.amplifying_prelus_8bit); TFLite
negates channels around a checkpoint's PReLUs as it does for float weights (they kept the three-op form
a x + (1 - a) relu(x), three roundings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeface.converters import qdq
from edgeface.converters import tflite_learned as tl
from onnx import numpy_helper

from edgeface.cli.main import main

LFW = Path(__file__).parents[1].parent / "shared" / "data" / "lfw"
PV = "tests._awkward_models:prelu_view_net"


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 aligned faces of 40 compression-split identities (the export minimum is 72)."""
    from edgeface.data.lfw import compression_split

    by_id: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by_id.setdefault(p.parent.name, []).append(p)
    root = tmp_path_factory.mktemp("calib")
    for ps in [ps[:2] for ps in by_id.values() if len(ps) >= 2][:40]:
        for p in ps:
            (root / p.parent.name).mkdir(exist_ok=True)
            shutil.copy(p, root / p.parent.name / p.name)
    return root


def _quantize_and_export(calib: Path, out: Path, bits: str, capsys: pytest.CaptureFixture) -> dict[str, dict]:
    """{suffix: report row} of `edgeface export` (both formats) of a `quantize --bits BITS` checkpoint."""
    ckpt = out / "q.pt"
    args = ["quantize", "-m", PV, "--bits", bits, "--calib", str(calib), "--num-images", "32", "--quiet"]
    assert main([*args, "-o", str(ckpt)]) == 0
    capsys.readouterr()
    flag = "--w6a6" if bits == "w6a6" else "--int8"
    args = ["export", "-m", PV, "-w", str(ckpt), flag, "--format", "onnx,tflite", "--calib", str(calib)]
    args += ["-o", str(out), "--calib-images", "48", "--parity-images", "24", "--min-cosine", "0.5", "--json"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    return {Path(r["path"]).suffix: r for r in json.loads(captured.out)}


def test_w6a6_prelu_checkpoint_exports_at_the_parity_of_its_checkpoint(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from edgeface.compress.quant import quant_plan
    from edgeface.models.loading import load_model

    rows = _quantize_and_export(calib, tmp_path, "w6a6", capsys)
    # cosine to the checkpoint's fake-quant forward: ONNX 0.9865, TFLite 0.9820 (measured; before: 6-bit
    # PReLU grids, no equalization in quantize, the three-op form in TFLite: 0.9569 and 0.9455)
    assert rows[".onnx"]["parity"]["mean_cosine"] >= 0.975, rows[".onnx"]["parity"]
    assert rows[".tflite"]["parity"]["mean_cosine"] >= 0.975, rows[".tflite"]["parity"]
    plan = quant_plan(load_model(PV, tmp_path / "q.pt").model)
    # every conv here feeds a PReLU with a slope beyond [-1, 1]: the checkpoint rounds its output on 8 bits,
    # as the artifacts do; its weights stay 6-bit (first and last layers: 8)
    assert {int(q["output"]["bits"]) for q in plan["layers"].values() if q["output"]} == {8}
    assert sorted(int(q["weight_bits"]) for q in plan["layers"].values()).count(6) == 5

    proto = onnx.load(rows[".onnx"]["path"])
    producer = {o: n for n in proto.graph.node for o in n.output}
    maxes = [n for n in proto.graph.node if qdq.is_prelu_max(n)]
    assert len(maxes) >= 4  # every PReLU whose output convs read (pw and res feed the residual Add)
    for m in maxes:  # every layer has a slope beyond [-1, 1] (test_amplifying_prelus...)
        codes = producer[m.input[0]]  # the Max runs on x's codes
        assert codes.op_type == "QuantizeLinear", m.name  # 8-bit: not clamped to 64 codes by a Clip
    assert any(n.op_type == "Clip" for n in proto.graph.node)  # while the other tensors are 6-bit

    model = tl.read(Path(rows[".tflite"]["path"]).read_bytes())
    ops = [tl.op_name(model, op) for op in model.subgraphs[0].operators]
    # stem, dw and down in one max (stem and down negated: slopes above 1); pw, res and last (a residual
    # Add, a Linear behind a view read them) keep a x + (1 - a) relu(x)
    assert ops.count("MAXIMUM") == 3


def test_int8_prelu_checkpoint_meets_the_parity_bar(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = _quantize_and_export(calib, tmp_path, "w8a8", capsys)
    for row in rows.values():  # min cosine ONNX 0.9926, TFLite 0.9920 (before: 0.9870, 0.9879; measured)
        assert row["parity"]["mean_cosine"] >= 0.99 and row["parity"]["min_cosine"] >= 0.99, row["parity"]


def test_amplifying_prelus_are_the_ones_with_a_slope_beyond_one() -> None:
    from edgeface.converters.onnx_float import export_float_onnx, prelu_as_max

    from tests._awkward_models import prelu_view_net

    net = prelu_view_net()
    graph = prelu_as_max(export_float_onnx(net, (112, 96)), any_slope=True)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    found = set(qdq.amplifying_prelus(graph))
    for n in graph.graph.node:
        if qdq.is_prelu_max(n):
            slope = next(inits[s.input[1]] for s in graph.graph.node if n.input[1] in s.output)
            assert (n.input[0] in found) == bool(np.abs(slope).max() > 1)
    assert len(found) == sum(qdq.is_prelu_max(n) for n in graph.graph.node)  # all of them, here
    with_small_slopes = prelu_as_max(export_float_onnx(_small_slopes(net), (112, 96)), any_slope=True)
    assert qdq.amplifying_prelus(with_small_slopes) == []


def _small_slopes(net: object) -> object:
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.clamp_(-1.0, 1.0)
    return net


def test_quantize_equalizes_prelu_layers_exactly() -> None:
    """What `edgeface quantize` runs before it learns grids: the layers between convs are equalized, the
    float function is kept, and a channel a slope of -4 widened no longer sets the per-tensor grid alone."""
    import copy

    import torch
    from edgeface.converters.torch_rewrite import equalize_prelus

    from tests._awkward_models import prelu_view_net

    net = prelu_view_net()
    x = torch.randn(8, 3, 112, 96, generator=torch.Generator().manual_seed(0))
    eq = copy.deepcopy(net)
    assert equalize_prelus(eq, [x]) == ["stem.2", "dw.2", "down.2"]  # the others feed an Add or a view
    with torch.no_grad():
        assert torch.allclose(eq(x), net(x), atol=1e-4, rtol=1e-4)

        def spread(m: torch.nn.Module) -> float:  # widest channel / median channel of the stem's PReLU output
            y = m.stem(x).transpose(0, 1).reshape(16, -1).abs().amax(dim=1)
            return float(y.max() / y.median())

        assert spread(eq) < 0.8 * spread(net)  # measured 3.45 -> 1.32
