"""`edgeface quantize` on awkward user models and on the real EdgeFace-XS, through the CLI.

No traceback reaches the user: our failure on a model is one `error:` line naming the op, exit 1, and the
traceback only with `edgeface --debug`. Every checkpoint reloads (weights_only) with the same --model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeface.cli.main import main
from edgeface.compress.quant.fakequant import QuantLinear
from edgeface.compress.quant.ptq import load_batches
from edgeface.models.loading import load_model

HYBRID = "tests._quant_models:tiny_hybrid"


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Path:
    """A small folder of real aligned faces from the compression split (no test identity)."""
    from edgeface.data.folders import compression_images

    root = tmp_path_factory.mktemp("faces")
    for p in compression_images(lfw)[:24]:
        (root / p.name).symlink_to(p)
    return root


def _follows_fp32(model: str, out: Path, faces: Path, weights: Path | None = None) -> float:
    fp32, q = load_model(model, weights), load_model(model, out)
    x = load_batches(sorted(faces.iterdir())[:8], fp32.spec)[0]
    with torch.no_grad():
        return F.cosine_similarity(fp32.model(x), q.model(x)).mean().item()


@pytest.mark.parametrize(
    "args",
    [
        ["--calibration", "minmax"],
        ["--calibration", "percentile", "--smooth", "0.8"],
        ["--bits", "w6a6"],
        ["--bits", "mixed", "--size-budget", "0.45"],
        ["--method", "qat", "--loss", "cosine", "--max-steps", "1", "--batch-size", "4"],
        ["--method", "qat", "--loss", "ekd", "--max-steps", "1", "--batch-size", "4"],
    ],
)
def test_hybrid_quantizes_and_reloads(args: list[str], faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.pt"
    base = ["quantize", "-m", HYBRID, "--calib", str(faces), "--num-images", "8", "--quiet", "-o", str(out)]
    assert main(base + args) == 0
    assert _follows_fp32(HYBRID, out, faces) > (0.95 if "w6a6" in args else 0.98)


def test_prelu_net_112x96_through_the_cli(faces: Path, tmp_path: Path) -> None:
    model, out = "tests._quant_models:prelu_net_112x96", tmp_path / "p.pt"
    assert (
        main(["quantize", "-m", model, "--calib", str(faces), "--num-images", "8", "--quiet", "-o", str(out)])
        == 0
    )
    assert load_model(model, out).spec.input_size == (112, 96)
    assert _follows_fp32(model, out, faces) > 0.98


def test_keep_float_leaves_a_layer_in_float(faces: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "kf.pt"
    base = ["quantize", "-m", HYBRID, "--calib", str(faces), "--num-images", "8", "--quiet"]
    assert main(base + ["--keep-float", "block1.fc1", "--keep-float", "fc", "-o", str(out)]) == 0
    q = load_model(HYBRID, out).model
    assert type(q.get_submodule("block1.fc1")) is nn.Linear and type(q.get_submodule("fc")) is nn.Linear
    assert isinstance(q.get_submodule("block1.fc2"), QuantLinear)
    assert main(base + ["--keep-float", "no.such.layer", "-o", str(tmp_path / "x.pt")]) == 2
    assert "no.such.layer" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("debug", [False, True])
def test_a_model_we_cannot_quantize_fails_in_one_line(
    debug: bool, faces: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "b1.pt"
    argv = ["quantize", "-m", "tests._quant_models:batch_of_one_net", "--calib", str(faces), "-o", str(out)]
    assert main((["--debug"] if debug else []) + argv + ["--num-images", "4", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert ("Traceback" in err) is debug
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "layer 'fc'" in last and "any batch size" in last
    assert not out.exists()


def test_real_edgeface_xs_quantizes_and_reloads(
    faces: Path, tmp_path: Path, shared: Path, monkeypatch
) -> None:
    """The CNN-transformer hybrid of issue 11 (shapes read from x.shape, channels-last Linear layers)."""
    folder = shared / "models" / "edgeface_xs"
    monkeypatch.syspath_prepend(str(folder))
    model, weights, out = "edgeface_xs:edgeface_xs", folder / "edgeface_xs.pt", tmp_path / "xs.pt"
    argv = ["quantize", "-m", model, "-w", str(weights), "--calib", str(faces), "--num-images", "4"]
    assert main(argv + ["--quiet", "-o", str(out)]) == 0
    raw = torch.load(out, weights_only=True)
    record = raw["transforms"][-1]
    assert record["plan"]["weights"] and all(b == 8 for b in record["plan"]["weights"].values())
    assert _follows_fp32(model, out, faces, weights) > 0.98


def test_quantize_names_the_weight_layers_it_leaves_float(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A module forward calls as one opaque op the graph analysis does not enter (here a MultiheadAttention
    with add_bias_kv, which quantize does not write out) keeps its weights float; "w8a8" alone would imply
    they are integer. The warning names it and its share, the JSON lists it; the test hybrid, whose
    attention is written out in forward, and a ViT of nn.TransformerEncoder, which quantize writes out
    (written_out.py), get no warning."""
    import json

    args = ["quantize", "--calib", str(faces), "--num-images", "8", "--quiet", "--json"]
    opaque = "tests._awkward_models:bias_kv_attention_net"
    assert main([*args, "-m", opaque, "-o", str(tmp_path / "b.pt")]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "attn (MultiheadAttention)" in captured.err, captured.err
    (row,) = json.loads(captured.out)["opaque_float_modules"]
    assert row["class"] == "MultiheadAttention" and row["weights"] > 0
    for model in (HYBRID, "tests._awkward_models:tiny_face_transformer"):
        assert main([*args, "-m", model, "-o", str(tmp_path / "h.pt")]) == 0
        captured = capsys.readouterr()
        assert "opaque op" not in captured.err and json.loads(captured.out)["opaque_float_modules"] == []


def test_quantize_names_the_conv_layers_its_placement_keeps_float(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A conv whose only reader the per-operator table does not make integer stays float (an integer kernel
    would not pay), silently before: LightCNN's Max-Feature-Map (chunk, then torch.max of the halves) left
    every conv of the net float under a "w8a8" label. Its share decides warning or note; the JSON lists
    each layer with its reader; a plain PReLU CNN gets neither."""
    import json

    args = ["quantize", "--calib", str(faces), "--num-images", "8", "--json"]
    assert main([*args, "-m", "tests._awkward_models:gray_lightcnn", "-o", str(tmp_path / "g.pt")]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["float_weight_layers"]
    assert [r["name"] for r in rows] == ["conv1.conv", "conv2.conv", "conv3.conv"]
    assert all(r["weights"] > 0 and r["why"].endswith("(read by max)") for r in rows), rows
    (line,) = [ln for ln in captured.err.splitlines() if "keep float weights" in ln]
    assert line.startswith("warning: 3 conv/linear layer(s)") and "(18 % of the model's)" in line, line
    assert main([*args, "-m", "tests._awkward_models:prelu_view_net", "-o", str(tmp_path / "p.pt")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["float_weight_layers"] == [] and "keep float" not in captured.err
