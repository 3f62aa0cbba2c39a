"""One-channel (grayscale) face models, LightCNN-style: spec, preprocessing, export and runtime.

A GRAY spec feeds the network one channel, the BT.601 luma of the aligned colour face, normalised with one
mean and one std value. Everything that builds a network input (evaluation, calibration, the exporters'
parity checks, the runtime, the Android demo's Kotlin port via the shared vectors) goes through
`runtime.preprocess`, so this checks the chain on the real pipeline: export to int8 ONNX and TFLite,
`edgeface eval` on the artifacts and `edgeface verify` on raw LFW photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.preprocess import LUMA_SHIFT, input_table, l2_normalize, luma, normalize, read_image
from torch import nn

from edgeface.cli.main import main
from edgeface.errors import EdgefaceError, ModelError
from edgeface.eval.embed import TorchFaceModel
from edgeface.models.loading import load_model
from edgeface.models.registry import build_model, first_conv
from edgeface.spec import JSON_SCHEMA, ModelSpec
from tests.test_eval_cli import _subset

GRAY_NET = "tests._awkward_models:gray_lightcnn"
RGB_NET = "tests._awkward_models:prelu_view_net"
GRAY = ModelSpec(name="g", channel_order="GRAY", mean=(0.5,), std=(0.5,), embedding_dim=32)


def four_channel_net() -> nn.Module:
    """An RGB-D-like stem: a channel count edgeface cannot feed."""
    return nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def one_channel_net() -> nn.Module:
    """A grayscale model that declares no spec at all."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class SelfGrayNet(nn.Module):
    """Takes RGB and converts to grey itself: its first conv takes 1 channel, the model takes 3."""

    def __init__(self) -> None:
        super().__init__()
        self.net = one_channel_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True))


def self_gray_net() -> nn.Module:
    return SelfGrayNet()


def test_luma_is_the_bt601_weights_rounded_on_every_colour():
    v = np.arange(1 << 24, dtype=np.uint32)[::5]  # every red-green pair with 52 blues (the suite stays fast)
    bgr = np.stack([v & 255, (v >> 8) & 255, v >> 16], axis=-1).astype(np.uint8)[None]
    y = luma(bgr)[0, :, 0].astype(np.float64)
    b, g, r = (bgr[0, :, k].astype(np.float64) for k in range(3))
    exact = 0.299 * r + 0.587 * g + 0.114 * b
    assert np.abs(y - exact).max() <= 0.5 + 2.0**-7  # rounded to the nearest level (14-bit weights)
    assert np.abs(y - cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0]).max() <= 1  # OpenCV's own rounding
    assert luma(np.array([[[255, 255, 255]]], np.uint8)).item() == 255 and LUMA_SHIFT == 14


def test_gray_input_has_one_channel_in_either_layout_and_plain_strides():
    face = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    x = normalize([face, face], GRAY)
    assert x.shape == (2, 1, 112, 112) and input_table(GRAY).shape == (256, 1, 1)
    np.testing.assert_allclose(x[0, 0], (luma(face)[..., 0] / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert normalize([face], GRAY.replace(layout="NHWC")).shape == (1, 112, 112, 1)
    # plain NCHW strides: a transposed (N, H, W, 1) array would look channels_last to torch, and a model's
    # `x.view(x.size(0), -1)` after a conv then fails
    t = nn.Conv2d(1, 2, 3)(torch.from_numpy(x))
    assert t.view(t.size(0), -1).shape == (2, 2 * 110 * 110)


def test_gray_spec_takes_one_mean_and_std_and_rgb_three():
    assert "GRAY" in JSON_SCHEMA["properties"]["channel_order"]["enum"]
    with pytest.raises(
        EdgefaceError, match=r"'mean' must be a list of 1 finite number \(one per channel of GRAY"
    ):
        ModelSpec(name="g", channel_order="GRAY")
    with pytest.raises(EdgefaceError, match=r"'std' must be a list of 3 finite numbers"):
        ModelSpec(name="g", mean=(0.5, 0.5, 0.5), std=(0.5,))
    assert ModelSpec.from_json(GRAY.to_json()) == GRAY and GRAY.channels == 1


def test_first_conv_is_the_one_forward_calls_first():
    net, _ = build_model(GRAY_NET)
    assert first_conv(net, (128, 128)) == ("conv1.conv", 1)


def test_a_spec_whose_channels_do_not_fit_the_first_conv_is_one_clear_error(tmp_path):
    rgb = tmp_path / "rgb.json"
    rgb.write_text(json.dumps({"input_size": [128, 128], "mean": [0.5] * 3, "std": [0.5] * 3}))
    with pytest.raises(
        EdgefaceError, match=r"first conv 'conv1.conv' takes 1 input channel but the spec"
    ) as e:
        load_model(GRAY_NET, spec_file=rgb)
    assert 'declare channel_order "GRAY" with one mean and one std value' in str(e.value)
    gray = tmp_path / "gray.json"
    gray.write_text(
        json.dumps({"input_size": [112, 96], "channel_order": "GRAY", "mean": [0.5], "std": [0.5]})
    )
    with pytest.raises(
        EdgefaceError, match=r"first conv 'stem.0' takes 3 input channels but the spec feeds 1"
    ):
        load_model(RGB_NET, spec_file=gray)
    with pytest.raises(ModelError, match=r"first conv '0' takes 4 input channels"):
        build_model("tests.test_gray_models:four_channel_net")


def test_an_undeclared_one_channel_model_defaults_to_gray():
    """No spec at all: the first conv takes 1 channel, so RGB would be a default that cannot run."""
    net, spec = build_model("tests._awkward_models:gray_lightcnn", {"input_size": [128, 128]})
    assert (spec.channel_order, spec.mean, spec.std) == ("GRAY", (0.5,), (0.5,))
    assert spec.provenance["spec_defaults"] == ["layout", "channel_order", "mean", "std", "embedding_dim"]


def test_a_model_declaring_nothing_is_gray_with_a_note_only_when_its_first_conv_takes_one_channel(capsys):
    spec = load_model("tests.test_gray_models:one_channel_net").spec
    assert (spec.channel_order, spec.input_size, spec.embedding_dim) == ("GRAY", (112, 112), 8)
    assert "channel_order GRAY, mean 0.5, std 0.5" in capsys.readouterr().err
    spec = load_model("tests._user_model:tiny_face_net").spec  # RGB: the documented defaults, no note
    assert spec.channel_order == "RGB" and "spec_defaults" not in spec.provenance
    assert "note:" not in capsys.readouterr().err


def test_a_model_that_converts_to_grey_itself_stays_rgb():
    """The first conv's 1 channel is not what the model takes: the probe sees the conv's input has another
    channel count than the model's, so it neither defaults to GRAY nor refuses an RGB spec."""
    _, spec = build_model("tests.test_gray_models:self_gray_net")
    assert spec.channel_order == "RGB" and spec.embedding_dim == 8
    _, spec = build_model("tests.test_gray_models:self_gray_net", {"mean": [0.5] * 3, "std": [0.5] * 3})
    assert spec.channel_order == "RGB"


def test_torch_evaluation_feeds_the_luma(lfw):
    """The torch model on `normalize`'s input equals it on OpenCV's own greyscale of the same resized face
    (an independent conversion; they differ by at most one grey level on a few pixels)."""
    net, spec = build_model(GRAY_NET)
    faces = [read_image(p) for p in sorted((lfw / "aligned112").rglob("*.jpg"))[:4]]
    ours = net(torch.from_numpy(normalize(faces, spec)))
    grey = [cv2.cvtColor(cv2.resize(f, (128, 128)), cv2.COLOR_BGR2GRAY) for f in faces]  # INTER_LINEAR
    ref = net(torch.from_numpy(np.stack(grey)[:, None].astype(np.float32) / 255.0))
    assert torch.nn.functional.cosine_similarity(ours, ref).min() > 0.999


def test_torch_evaluation_of_an_nhwc_gray_spec_keeps_plain_strides(lfw):
    """An artifact spec says NHWC; the torch model still gets NCHW, with strides its `view` accepts."""
    net, spec = build_model(GRAY_NET)
    faces = [read_image(p) for p in sorted((lfw / "aligned112").rglob("*.jpg"))[:2]]
    nhwc = TorchFaceModel(net, spec.replace(layout="NHWC")).embed(faces)
    np.testing.assert_array_equal(nhwc, TorchFaceModel(net, spec).embed(faces))


@pytest.fixture(scope="module")
def exported(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gray") / "art"
    args = [
        "export",
        "--int8",
        "--format",
        "onnx,tflite",
        "--model",
        GRAY_NET,
        "--calib",
        str(lfw / "aligned112"),
    ]
    args += ["--calib-images", "72", "--parity-images", "16", "-o", str(out)]
    assert main(args) == 0
    return out


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_int8_export_of_a_gray_model_carries_the_spec_and_passes_parity(exported, suffix, lfw):
    path = exported / f"tests._awkward_models_gray_lightcnn_int8{suffix}"
    art = load_artifact(path)  # the spec embedded in the artifact
    assert (art.spec.channel_order, art.spec.mean, art.spec.std, art.spec.input_size) == (
        "GRAY",
        (0.0,),
        (1.0,),
        (128, 128),
    )
    assert art.spec.input_quant is not None and art.spec.provenance["parity"]["mean_cosine"] > 0.99
    # the runtime's embeddings of real faces agree with the torch model's
    net, spec = build_model(GRAY_NET)
    faces = [read_image(p) for p in sorted((lfw / "aligned112").rglob("*.jpg"))[:8]]
    ref = torch.nn.functional.normalize(net(torch.from_numpy(normalize(faces, spec))), dim=1).detach().numpy()
    got = l2_normalize(art.embed(faces))
    assert np.min(np.sum(ref * got, axis=1)) > 0.99


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_eval_and_verify_run_on_the_gray_artifacts(exported, suffix, lfw, tmp_path, capsys):
    path = exported / f"tests._awkward_models_gray_lightcnn_int8{suffix}"
    pairs = _subset(lfw, tmp_path, per_fold=2)
    args = ["eval", "--model", str(path), "--pairs", str(pairs), "--images", str(lfw / "aligned112")]
    assert main([*args, "--folds", "9-10", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_pairs"] == 8
    raw = lfw / "raw_sample" / "Anna_Kournikova"
    photos = sorted(raw.glob("*.jpg"))[:2]
    capsys.readouterr()
    assert main(["verify", "--model", str(path), "--json", *map(str, photos)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert -1.0 <= result["score"] <= 1.0 and all(f["faces_found"] == 1 for f in result["faces"])
    # the export's output folder is a pack: the same verify through it, with the artifact chosen by name
    pack = ["verify", "--model", str(exported), "--artifact", path.name, "--json", *map(str, photos)]
    assert main(pack) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(result["score"], abs=1e-6)
