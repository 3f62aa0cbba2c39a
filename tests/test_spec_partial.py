"""A model's spec may declare only what differs from the defaults; the rest is filled in and said so.

Users write `edgeface_spec = {"input_size": [112, 96]}` or give only their mean/std and expect 112x112,
NCHW, RGB, mean/std 0.5 and a measured embedding size for what they leave out. Fields that are present
are still validated as they are: a wrong value is refused, never replaced by a default.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest
from torch import nn

from edgeface.cli.main import main
from edgeface.errors import EdgefaceError
from edgeface.models.loading import load_model
from edgeface.models.registry import build_model
from edgeface.spec import ModelSpec, with_defaults
from tests._awkward_models import gray_lightcnn
from tests.test_eval_cli import _subset

BASE = ModelSpec(name="m")
GRAY_NET = "tests._awkward_models:gray_lightcnn"  # declares input_size, channel_order, mean, std only
USER_NET = "tests._user_model:tiny_face_net"


def test_only_input_size_gets_the_rest_and_the_crop_follows_it():
    spec, missing = with_defaults({"input_size": [112, 96]}, BASE)
    assert missing == ["layout", "channel_order", "mean", "std", "embedding_dim"]
    assert (spec.layout, spec.channel_order, spec.mean, spec.std) == ("NCHW", "RGB", (0.5,) * 3, (0.5,) * 3)
    # face_crop left out follows the declared input_size: the central 96 columns, not the whole face
    assert spec.face_crop is None and spec.crop_box() == (8.0, 0.0, 96.0, 112.0)


def test_only_mean_and_std():
    spec, missing = with_defaults({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, BASE)
    assert missing == ["input_size", "layout", "channel_order", "embedding_dim"]
    assert spec.input_size == (112, 112) and spec.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(
    ("declared", "field"),
    [
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"input_size": [112, 100000]}, "input_size"),
        ({"channel_order": "rgb"}, "channel_order"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"channel_order": "GRAY", "mean": [0.5, 0.5, 0.5]}, "mean"),
    ],
)
def test_present_but_invalid_fields_are_still_refused(declared, field):
    with pytest.raises(EdgefaceError, match=f"invalid model spec: '{field}'"):
        with_defaults(declared, BASE)


def test_a_face_crop_without_its_input_size_says_input_size_was_defaulted():
    with pytest.raises(EdgefaceError, match="input_size was not declared, so it is 112x112: declare it"):
        with_defaults({"face_crop": [8, 0, 96, 112]}, BASE)


def test_gray_mean_and_std_default_to_one_value_each():
    spec, missing = with_defaults({"channel_order": "GRAY"}, BASE)
    assert spec.channels == 1 and spec.mean == (0.5,) and spec.std == (0.5,)
    assert "mean" in missing and "std" in missing


def test_a_declared_partial_spec_is_completed_and_recorded():
    net, spec = build_model(GRAY_NET)
    assert spec.input_size == (128, 128) and spec.channel_order == "GRAY" and spec.mean == (0.0,)
    assert spec.embedding_dim == 32  # measured: the declaration left it out
    assert spec.provenance["spec_defaults"] == ["layout", "embedding_dim"]


def test_partial_spec_file_for_a_registry_model_keeps_its_other_fields(tmp_path):
    """A partial --spec on a known model fills the rest from that model's own spec, not the generic one."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"threshold": 0.3}))
    spec = load_model("mobilefacenet", spec_file=path).spec
    assert spec.threshold == 0.3 and spec.embedding_dim == 128 and spec.mean == (0.485, 0.456, 0.406)


def test_an_invalid_field_in_a_partial_spec_file_names_the_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"input_size": [112, 96], "std": [0.5, -1, 0.5]}))
    with pytest.raises(EdgefaceError, match=rf"{path.name}: invalid model spec: 'std'"):
        load_model(USER_NET, spec_file=path)


def test_the_cli_says_which_fields_took_defaults_in_one_note_and_quiet_silences_it(lfw, tmp_path, capsys):
    pairs = _subset(lfw, tmp_path, per_fold=1)
    args = ["eval", "--model", GRAY_NET, "--pairs", str(pairs), "--images", str(lfw / "aligned112")]
    args += ["--folds", "9-10", "--json", str(tmp_path / "e.json")]
    assert main(args) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note:")]
    assert notes == [
        f"note: {GRAY_NET}: the spec does not declare layout, embedding_dim; using the defaults: "
        "layout NCHW, embedding_dim 32 (measured)"
    ]
    assert main(["--quiet", *args]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_partial_spec_file_through_the_cli(lfw, tmp_path: Path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"mean": [0.5, 0.5, 0.5]}))
    pairs = _subset(lfw, tmp_path, per_fold=1)
    args = ["eval", "--model", USER_NET, "--spec", str(path), "--pairs", str(pairs)]
    args += ["--images", str(lfw / "aligned112"), "--folds", "9-10", "--json", str(tmp_path / "e.json")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "the spec does not declare input_size, layout, channel_order, std, embedding_dim" in err
    path.write_text(json.dumps({"mean": [0.5, 0.5]}))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert "'mean' must be a list of 3 finite numbers" in err


def test_a_partial_spec_file_over_a_compressed_checkpoint_keeps_the_checkpoint_fields(lfw, tmp_path):
    ckpt = tmp_path / "q.pt"
    args = ["quantize", "--model", GRAY_NET, "--calib", str(lfw / "aligned112"), "--num-images", "16"]
    assert main([*args, "--quiet", "-o", str(ckpt)]) == 0
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"threshold": 0.5}))
    spec = load_model(GRAY_NET, ckpt, spec_file=path).spec
    assert (spec.threshold, spec.channel_order, spec.input_size, spec.precision) == (
        0.5,
        "GRAY",
        (128, 128),
        "w8a8",
    )
    path.write_text(json.dumps({"channel_order": "BGR", "mean": [0.5]}))  # present and invalid: refused
    with pytest.raises(EdgefaceError, match=r"s\.json: invalid model spec: 'mean' must be a list of 3"):
        load_model(GRAY_NET, ckpt, spec_file=path)
    path.write_text(json.dumps({"channel_order": "BGR"}))  # an override must fit the model, as a declaration
    with pytest.raises(EdgefaceError, match=r"first conv 'conv1.conv' takes 1 input channel but the spec"):
        load_model(GRAY_NET, ckpt, spec_file=path)


def proxy_spec_net() -> nn.Module:
    net = gray_lightcnn()
    net.edgeface_spec = MappingProxyType(dict(net.edgeface_spec))  # a read-only mapping
    return net


def object_spec_net() -> nn.Module:
    net = gray_lightcnn()
    net.edgeface_spec = ModelSpec(
        name="g", input_size=(128, 128), channel_order="GRAY", mean=(0.0,), std=(1.0,)
    )
    return net


def test_a_spec_object_or_any_mapping_is_a_declaration():
    """`edgeface_spec` as a read-only mapping works like the dict; as a ModelSpec it is complete, and
    probed: its default embedding_dim 512 is not what the model returns."""
    assert build_model("tests.test_spec_partial:proxy_spec_net")[1].channel_order == "GRAY"
    with pytest.raises(EdgefaceError, match="returns 32-d embeddings but its spec says embedding_dim 512"):
        build_model("tests.test_spec_partial:object_spec_net")


def test_a_partial_spec_that_does_not_fit_a_builtin_model_is_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"channel_order": "GRAY"}))
    with pytest.raises(
        EdgefaceError, match=r"first conv 'conv1.0' takes 3 input channels but the spec feeds 1"
    ):
        load_model("mobilefacenet", spec_file=path)


def test_a_base_face_crop_is_kept_unless_the_declaration_changes_the_input_size():
    base = ModelSpec(name="b", input_size=(112, 96), face_crop=(10.0, 0.0, 96.0, 112.0))
    assert with_defaults({"threshold": 0.4}, base)[0].face_crop == (10.0, 0.0, 96.0, 112.0)
    assert with_defaults({"input_size": [112, 112]}, base)[0].face_crop is None
