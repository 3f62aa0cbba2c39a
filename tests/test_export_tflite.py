"""TFLite export end to end on a small network (litert-torch conversion of the full MobileFaceNet takes
minutes on a shared CPU; benchmarks/export_accuracy.py covers it): full int8 with per-channel weight scales,
the spec in the flatbuffer metadata and beside it, parity through LiteRT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from edgeface.converters.metadata import read_tflite_spec
from edgeface.converters.tflite import inspect_tflite

from edgeface.cli.main import main
from edgeface.spec import read_spec_json, spec_path_for

SHARED = Path(__file__).parents[1].parent / "shared"
LFW = SHARED / "data" / "lfw"

TINY = """
import torch
from torch import nn

EDGEFACE_SPEC = {"name": "tinyface", "input_size": [32, 32], "layout": "NCHW", "channel_order": "RGB",
                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "embedding_dim": 16}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 16, 16, groups=16, bias=False), nn.Flatten(),
                                  nn.Linear(16, 16))

    def forward(self, x):
        y = self.stem(x)
        return self.head(y + self.pw(self.dw(y)))


def tiny():
    return Tiny().eval()
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("tinymod")
    (root / "edgeface_tiny_model.py").write_text(TINY)
    sys.path.insert(0, str(root))
    return "edgeface_tiny_model:tiny"


@pytest.fixture(scope="module")
def calib_dir(pair_faces: Path) -> Path:
    return pair_faces


def test_tflite_int8_export(
    tiny_model: str, calib_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "export",
            "-m",
            tiny_model,
            "--precision",
            "fp32,int8",
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
            "0.95",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    rows = json.loads(captured.out)  # stdout is pure JSON even though litert-torch prints progress
    int8 = out / "tinyface_int8.tflite"
    data = int8.read_bytes()
    spec = read_tflite_spec(data)
    assert spec == read_spec_json(spec_path_for(int8))
    assert spec.layout == "NHWC" and spec.precision == "w8a8" and spec.input_quant.dtype == "int8"
    assert spec.threshold is not None
    info = inspect_tflite(data)
    assert info["float_ops"] == [] and info["per_channel_layers"] == 5  # 4 convs + the linear head
    row = next(r for r in rows if r["precision"] == "int8")
    assert row["parity"]["mean_cosine"] >= 0.95 and row["parity"]["images"] == 16
    # XNNPACK's delegate takes every op of this plain CNN (ReLUs fused into the convs), fp32 and int8
    assert info["outside_delegate"] == [] and "outside_xnnpack" not in row
    assert inspect_tflite((out / "tinyface_fp32.tflite").read_bytes())["outside_delegate"] == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "tinyface_fp32.tflite",
            "tinyface_fp32.tflite.json",
            "tinyface_int8.tflite",
            "tinyface_int8.tflite.json",
            # the output folder is a pack (tests/test_pack_export.py)
            "edgeface-pack.json",
            "face_detection_yunet_2026may.onnx",
            "licenses",
        ]
    )
    assert np.isfinite(row["threshold"])


def test_failed_parity_leaves_nothing(
    tiny_model: str, calib_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A parity bar no int8 model can meet: exit 3, the drifting layer named, the folder left empty."""
    out = tmp_path / "o"
    code = main(
        [
            "export",
            "-m",
            tiny_model,
            "--precision",
            "fp32,int8",
            "--format",
            "onnx",
            "--calib",
            str(calib_dir),
            "-o",
            str(out),
            "--min-cosine",
            "1.0",
            "--calib-images",
            "48",
            "--parity-images",
            "16",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 3
        and "wrote nothing; failed:" in err
        and "not written" in err
        and "tinyface_int8.onnx" in err
        and "most drift at /" in err
    )
    assert out.is_dir() and list(out.iterdir()) == []
