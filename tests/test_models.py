from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeface.errors import EdgefaceError
from edgeface.models.loading import load_model
from edgeface.models.registry import REGISTRY, build_model


def test_mobilefacenet_matches_reference_onnx(mfn_weights, mfn_onnx):
    loaded = load_model("mobilefacenet", mfn_weights)
    session = ort.InferenceSession(str(mfn_onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 112, 112)).astype(np.float32)
    ref = np.concatenate([session.run(None, {"input0": x[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        out = loaded.model(torch.from_numpy(x)).numpy()
    assert out.shape == (3, 128)
    assert np.abs(out - ref).max() < 1e-4
    assert loaded.spec.embedding_dim == 128
    assert loaded.spec.mean == (0.485, 0.456, 0.406)


def test_mobilefacenet_checkpoint_has_every_key(mfn_weights):
    state = torch.load(mfn_weights, map_location="cpu", weights_only=True)
    model, _ = build_model("mobilefacenet")
    assert set(model.state_dict()) == set(state)


@pytest.mark.parametrize(
    ("name", "params_m"),
    # arcface_torch's published sizes: r18 24.0M, r34 34.1M, r50 43.6M, r100 65.2M (with the 512-d fc).
    [("iresnet18", 24.03), ("iresnet34", 34.14), ("iresnet50", 43.59), ("iresnet100", 65.16)],
)
def test_iresnet_sizes_match_arcface_torch(name, params_m):
    model, spec = build_model(name)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    assert spec.embedding_dim == 512


def test_arcface_torch_parameter_names():
    iresnet, _ = build_model("iresnet18")
    keys = set(iresnet.state_dict())
    for k in (
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.prelu.weight",
        "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "features.running_mean",
    ):
        assert k in keys, k
    mbf, _ = build_model("mbf")
    keys = set(mbf.state_dict())
    for k in (
        "layers.0.layers.0.weight",
        "layers.0.layers.2.weight",
        "layers.2.layers.0.layers.0.weight",
        "layers.3.layers.0.layers.2.layers.1.running_var",
        "conv_sep.layers.2.weight",
        "features.layers.0.layers.0.weight",
        "features.layers.2.weight",
        "features.layers.3.running_mean",
    ):
        assert k in keys, k


@pytest.mark.parametrize("name", ["iresnet18", "mbf"])
def test_prelu_models_forward_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model, spec = build_model(name)
    model.eval()
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, spec.embedding_dim)
    # arcface_torch saves DDP-wrapped state dicts: 'module.' prefixes inside a {'state_dict': ...} wrapper
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model(name, path)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), y, atol=1e-5)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "net_state_dict"])
def test_common_wrappers(wrapper, tmp_path, mfn_weights):
    state = torch.load(mfn_weights, map_location="cpu", weights_only=True)
    path = tmp_path / "w.pt"
    torch.save({wrapper: state}, path)
    assert load_model("mobilefacenet", path).spec.embedding_dim == 128


@pytest.mark.parametrize(
    "layout",
    ["no_num_batches_tracked", "lightning_model_prefix", "backbone_beside_margin_head", "ddp_in_lightning"],
)
def test_training_checkpoint_layouts_load(layout, tmp_path):
    """Checkpoints as training code writes them: without BN's num_batches_tracked (older PyTorch, converted
    MXNet/Caffe weights: torch's own load_state_dict accepts them), a Lightning module's `model.` prefix,
    the network under `backbone.` beside a margin head's weights. They used to be refused as not fitting."""
    net, _ = build_model("tests._user_model:tiny_face_net")
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.5, 0.5)
    state = net.state_dict()
    if layout == "no_num_batches_tracked":
        obj = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    elif layout == "lightning_model_prefix":
        obj = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    elif layout == "backbone_beside_margin_head":
        backbone = {f"backbone.{k}": v for k, v in state.items()}
        obj = {"state_dict": {**backbone, "head.kernel": torch.ones(32, 9)}}
    else:
        obj = {"state_dict": {f"module.model.{k}": v for k, v in state.items()}}
    torch.save(obj, tmp_path / "w.pt")
    loaded = load_model("tests._user_model:tiny_face_net", tmp_path / "w.pt").model
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))


def test_ambiguous_prefix_is_refused_naming_the_keys(tmp_path):
    """Two sub-networks that both fit (a student and its EMA copy): no guessing, the keys are named."""
    net, _ = build_model("tests._user_model:tiny_face_net")
    state = net.state_dict()
    torch.save(
        {**{f"student.{k}": v for k, v in state.items()}, **{f"ema.{k}": v for k, v in state.items()}},
        tmp_path / "w.pt",
    )
    with pytest.raises(EdgefaceError, match="do not fit the architecture: missing keys"):
        load_model("tests._user_model:tiny_face_net", tmp_path / "w.pt")


def test_weights_that_do_not_fit_name_the_keys(mfn_weights):
    with pytest.raises(EdgefaceError, match=r"do not fit the architecture: missing keys \['conv1.weight'"):
        load_model("iresnet18", mfn_weights)


def test_unknown_model_and_bad_factory():
    with pytest.raises(EdgefaceError, match="unknown model 'resnet9000'"):
        build_model("resnet9000")
    with pytest.raises(EdgefaceError, match="cannot import module 'no_such_pkg.models'"):
        build_model("no_such_pkg.models:make")
    with pytest.raises(EdgefaceError, match="has no attribute 'nope'"):
        build_model("edgeface.models.mbf:nope")


def test_user_factory_measures_embedding_dim():
    model, spec = build_model("tests._user_model:tiny_face_net")
    assert spec.embedding_dim == 32 and spec.name == "tests._user_model:tiny_face_net"
    declared, dspec = build_model("tests._user_model:declared_spec_net")
    assert dspec.input_size == (96, 96) and dspec.channel_order == "BGR" and dspec.embedding_dim == 64


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("tuple_output_net", r"must be a \[batch, dim\] embedding tensor, got a tuple of 2 items"),
        ("wrong_dim_spec_net", "returns 32-d embeddings but its spec says embedding_dim 128"),
    ],
)
def test_declared_spec_does_not_skip_the_output_check(factory, message, tmp_path, capsys, lfw):
    """A model with a declared spec used to skip the forward-pass check: a tuple output became an
    internal failure deep in the export (exit 1), a wrong embedding_dim a late error about a staging file."""
    from edgeface.cli.main import main

    with pytest.raises(EdgefaceError, match=message):
        build_model(f"tests._user_model:{factory}")
    args = ["export", "-m", f"tests._user_model:{factory}", "--int8", "--format", "onnx"]
    args += ["--calib", str(lfw), "-o", str(tmp_path / "out"), "--no-pack"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err


def test_registry_specs_are_valid():
    for name, entry in REGISTRY.items():
        assert entry.spec.name == name
        assert entry.spec.input_size == (112, 112)
