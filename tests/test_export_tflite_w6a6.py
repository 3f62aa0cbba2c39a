"""w6a6 TFLite: int8 storage, weights on the 6-bit grid, every activation held to 64 codes on real faces.

The small network of test_export_tflite.py (litert-torch converts it in seconds); the full MobileFaceNet
numbers are in docs/export.md ("TFLite: learned scales and w6a6")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from edgeface.converters import tflite_learned as tl
from edgeface.converters.metadata import read_tflite_spec

from edgeface.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from test_export_tflite import TINY, calib_dir, tiny_model  # noqa: E402,F401  (the same network and images)


def _run_all_tensors(data: bytes, images: list[Path], spec) -> dict[int, set[int]]:  # noqa: ANN001
    """Every op output's int8 codes over the images, through LiteRT with all tensors kept."""
    from ai_edge_litert.interpreter import Interpreter
    from edgeface.runtime.preprocess import normalize, read_image

    interp = Interpreter(model_content=data, num_threads=1, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    s, z = inp["quantization"]
    x = normalize([read_image(p) for p in images], spec)
    codes: dict[int, set[int]] = {}
    for xi in x:
        interp.set_tensor(inp["index"], np.clip(np.round(xi[None] / s) + z, -128, 127).astype(np.int8))
        interp.invoke()
        for op in interp._get_ops_details():
            for o in op["outputs"]:
                codes.setdefault(int(o), set()).update(np.unique(interp.get_tensor(o)).tolist())
    return codes


def _held_codes(data: bytes, images: list[Path], spec) -> tuple[dict[int, set[int]], list[set[int]]]:  # noqa: ANN001
    """Codes of every held activation, checked to lie in one 64-code window, and the codes of the ends.

    Held tensors take at most 64 consecutive codes, [64, 127] where the producer writes them (its fused ReLU
    or int8 saturation bounds them) or [-128, -65] after a requantizing clamp. The 8-bit ends are the graph
    input (and its padding) and the embedding, as in the ONNX export; a clamp's own input is the tensor
    before the clamp (in ONNX QCDQ: QuantizeLinear's output before Clip)."""
    model = tl.read(data)
    graph = model.subgraphs[0]
    ends = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
    for op in graph.operators:
        if tl.op_name(model, op) == "PAD" and int(op.inputs[0]) in ends:
            ends.add(int(op.outputs[0]))
    clamps = [op for op in graph.operators if tl.tensor_name(graph.tensors[op.outputs[0]]).endswith("/grid6")]
    assert clamps and all(tl.op_name(model, op) == "QUANTIZE" for op in clamps)
    before_clamp = {int(op.inputs[0]) for op in clamps}
    codes = _run_all_tensors(data, images, spec)
    held = {i: c for i, c in codes.items() if i not in ends | before_clamp}
    for i, c in held.items():
        name = tl.tensor_name(graph.tensors[i])
        window = (64, 127) if min(c) >= 64 else (-128, -65)
        assert len(c) <= 64 and window[0] <= min(c) and max(c) <= window[1], (name, len(c), min(c), max(c))
    assert max(len(c) for c in held.values()) > 32  # the grid is used, not collapsed
    return held, [codes[i] for i in ends if i in codes]


def _export_w6a6(
    factory: str, calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture, min_cosine: float
) -> dict:
    """`edgeface export --w6a6 --format tflite` of a tests._quant_models factory, small calibration; its
    JSON row (the export must succeed)."""
    args = ["export", "-m", f"tests._quant_models:{factory}", "--w6a6", "--format", "tflite"]
    args += ["--calib", str(calib), "-o", str(tmp_path / "out"), "--calib-images", "48"]
    code = main([*args, "--parity-images", "16", "--min-cosine", str(min_cosine), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    (row,) = json.loads(captured.out)
    return row


def test_tflite_w6a6_holds_the_6bit_grid(
    tiny_model: str,  # noqa: F811
    calib_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "export",
            "-m",
            tiny_model,
            "--w6a6",
            "--format",
            "tflite",
            "--calib",
            str(calib_dir),
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
    assert code == 0, captured.err[-2000:]
    (row,) = json.loads(captured.out)
    path = out / "tinyface_w6a6.tflite"
    data = path.read_bytes()
    spec = read_tflite_spec(data)
    assert spec.precision == "w6a6" and spec.layout == "NHWC" and "6-bit grid" in spec.weight_quant
    assert row["parity"]["mean_cosine"] >= 0.9 and row["size_bytes"] == len(data)

    model = tl.read(data)
    graph = model.subgraphs[0]
    main_ops, _ = tl.weighted_ops(model)
    assert len(main_ops) == 5
    weight_bytes = 0
    for k in main_ops:  # every weight on the 6-bit grid, per channel
        w = graph.tensors[graph.operators[k].inputs[1]]
        q = tl.buffer_array(model, w, np.int8)
        assert q.min() >= -31 and q.max() <= 31 and len(w.quantization.scale) == tl.out_channels(model, k)
        assert np.abs(q).max() == 31  # max-abs scaling reaches the grid's end
        weight_bytes += q.size
    assert row["packed_size_bytes"] == len(data) - weight_bytes + (weight_bytes * 6 + 7) // 8

    held, ends_codes = _held_codes(data, sorted(calib_dir.rglob("*.jpg"))[:24], spec)
    assert len(held) == 5  # stem, dw (their fused ReLU6 / ReLU hold them) and the three clamps
    assert any(len(c) > 64 for c in ends_codes)  # the ends really are 8-bit

    # the clamps run inside XNNPACK: one delegate partition covers the whole graph
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    assert [o["op_name"] for o in interp._get_ops_details()].count("DELEGATE") == 1


def test_tflite_w6a6_prelu_as_max(calib_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """A PReLU network (rewritten to max(x, slope * x) by torch_rewrite): the max reads two clamped tensors
    and must move with them; its 1x1 slope conv keeps 8-bit weights (they are the activation, not learned)."""
    import torch
    from edgeface.converters.export import load_inputs
    from edgeface.converters.tflite import _FLOAT_CACHE, build_tflite

    from edgeface.models.loading import load_model

    (tmp_path / "edgeface_tiny_w6_prelu.py").write_text(
        TINY.replace("nn.ReLU())", "nn.PReLU(16))").replace(
            "return Tiny().eval()",
            "m = Tiny().eval()\n    m.dw[2].weight.data.copy_(torch.linspace(0.05, 0.9, 16))\n    return m",
        )
    )
    sys.path.insert(0, str(tmp_path))
    loaded = load_model("edgeface_tiny_w6_prelu:tiny")
    images = sorted(calib_dir.rglob("*.jpg"))
    x = load_inputs(images[:48], loaded.spec)
    _FLOAT_CACHE.clear()
    data, spec, info = build_tflite(loaded.model, loaded.spec, "w6a6", [x.transpose(0, 2, 3, 1).copy()])
    _FLOAT_CACHE.clear()
    model = tl.read(data)
    graph = model.subgraphs[0]
    main_ops, slopes = tl.weighted_ops(model)
    assert len(main_ops) == 5 and len(slopes) == 1
    slope = tl.buffer_array(model, graph.tensors[graph.operators[slopes[0]].inputs[1]], np.int8)
    assert np.abs(slope).max() == 127 and info["int8_weight_bytes"] == 5184  # 6-bit weights only
    held, _ = _held_codes(data, images[48:72], spec)
    prelu_max = [k for k, op in enumerate(graph.operators) if tl.op_name(model, op) == "MAXIMUM"]
    assert len(prelu_max) == 1 and int(graph.operators[prelu_max[0]].outputs[0]) in held

    from edgeface.converters.metadata import embed_tflite_spec
    from edgeface.runtime.backends import load_artifact

    path = tmp_path / "prelu_w6a6.tflite"
    path.write_bytes(embed_tflite_spec(data, spec))
    art = load_artifact(path, num_threads=1)
    probe = x[:8]
    emb = np.concatenate([art.run(p[None].transpose(0, 2, 3, 1)) for p in probe])
    with torch.inference_mode():
        ref = loaded.model(torch.from_numpy(probe)).numpy()
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() > 0.99, cos


def test_tflite_w6a6_of_a_hybrid_gives_its_clamps_grids_of_their_rank(
    calib_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """A hybrid holds rank-1 and rank-3 tensors (tokens, the pooled embedding) to the 6-bit grid; the clamp
    constants take the quantizer's scale arrays, which must have their tensor's rank (rank-4 arrays made
    ai-edge-quantizer refuse: "Ranks of scales (5) ... must be the same as the tensor rank (1)")."""
    row = _export_w6a6("tiny_hybrid", calib_dir, tmp_path, capsys, min_cosine=0.9)
    assert row["parity"]["mean_cosine"] >= 0.9
    model = tl.read(Path(row["path"]).read_bytes())
    clamps = [t for t in model.subgraphs[0].tensors if tl.tensor_name(t).endswith(tl.CLAMP_SUFFIX)]
    assert {len(t.shape) for t in clamps} >= {1, 3}  # the ranks that failed are there


def test_tflite_w6a6_concat_reads_its_inputs_on_its_grid(
    calib_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """EdgeFace-XS's split blocks concatenate a conv output that only the concat reads (clamped on the
    concat's grid, so the clamp moves its zero point) with inputs ai-edge-quantizer requantized onto that
    grid; XNNPACK refuses a concatenation of two grids, which failed the export (exit 1, "failed to delegate
    CONCATENATION node"). The moved input is requantized back; a concat of inputs that all moved alike
    moves with them instead."""
    row = _export_w6a6("split_cat_net", calib_dir, tmp_path, capsys, min_cosine=0.9)
    assert row["parity"]["mean_cosine"] >= 0.99, row["parity"]
    data = Path(row["path"]).read_bytes()
    model = tl.read(data)
    graph = model.subgraphs[0]

    def grid(i: int) -> tuple[float, int]:
        q = graph.tensors[i].quantization
        return float(q.scale[0]), int(q.zeroPoint[0])

    concats = [op for op in graph.operators if tl.op_name(model, op) == "CONCATENATION"]
    assert len(concats) == 2
    for op in concats:
        assert {grid(int(i)) for i in op.inputs} == {grid(int(op.outputs[0]))}
    onto = [t for t in graph.tensors if tl.ONTO_SUFFIX in tl.tensor_name(t)]
    assert len(onto) == 1  # the first concat's clamped conv output; the second concat moved instead
    assert grid(int(concats[1].outputs[0]))[1] < grid(int(concats[0].outputs[0]))[1]  # bottom codes

    held, _ = _held_codes(data, sorted(calib_dir.rglob("*.jpg"))[:24], read_tflite_spec(data))
    assert graph.tensors.index(onto[0]) in held  # requantized back onto the concat's 64 codes

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    assert [o["op_name"] for o in interp._get_ops_details()].count("DELEGATE") == 1


def test_tflite_w6a6_keeps_float_what_int8_cannot_carry(
    calib_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """As its int8 twin and the ONNX w6a6 export, w6a6 TFLite keeps float the tensors the sensitivity pass
    finds int8 cannot carry (on the 8-bit grids): fragile_tail_net's ReLU6 output, one saturated channel
    setting the grid of 47 near zero. Before, w6a6 TFLite quantized every tensor (parity 0.62 here, 0.02 on
    EdgeFace-XS). The kept tensor gets no clamp, which would put it back on a grid for its readers."""
    row = _export_w6a6("fragile_tail_net", calib_dir, tmp_path, capsys, min_cosine=0.99)
    (kept,) = row["kept_float_tensors"]
    model = tl.read(Path(row["path"]).read_bytes())
    graph = model.subgraphs[0]
    names = [tl.tensor_name(t) for t in graph.tensors]
    assert kept + tl.CLAMP_SUFFIX not in names and graph.tensors[names.index(kept)].type == 0  # FLOAT32
    assert any(n.endswith(tl.CLAMP_SUFFIX) for n in names)  # the other held tensors keep theirs
