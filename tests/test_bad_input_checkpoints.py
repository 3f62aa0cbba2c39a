"""Bad checkpoints and the other files the training-side commands read (spec JSON, pairs files), through
`eval`, which loads a model exactly as quantize, prune and export do.

A checkpoint is data: loading never imports or calls anything it names (tests/test_security_checkpoint.py
covers that attack in depth; one case here runs it through this suite's contract). NaN weights do not become
a report of NaN scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests._user_model import tiny_face_net
from tests.test_bad_input_outputs import MODEL, small_pairs
from tests.test_bad_input_support import LFW, assert_one_error, run, run_process, snapshot


def _eval(*extra: object) -> list[object]:
    return [
        "eval",
        "-m",
        MODEL,
        "--pairs",
        small_pairs(),
        "--images",
        LFW / "aligned112",
        "--folds",
        "1-2",
        *extra,
    ]


def _save(obj: object, p: Path) -> Path:
    torch.save(obj, p)
    return p


def _bytes(data: bytes, p: Path) -> Path:
    p.write_bytes(data)
    return p


def _nan_weights(p: Path) -> Path:
    sd = {
        k: v.float() * float("nan") if v.is_floating_point() else v
        for k, v in tiny_face_net().state_dict().items()
    }
    return _save(sd, p)


def _good(p: Path) -> Path:
    return _save(tiny_face_net().state_dict(), p)


def _crafted_model_field(p: Path) -> Path:
    from edgeface.models.loading import CHECKPOINT_FORMAT
    from edgeface.spec import ModelSpec

    return _save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": "os:abort",  # would end the process if it were ever called
            "spec": ModelSpec(name="x", embedding_dim=32).to_dict(),
            "transforms": [],
            "state_dict": tiny_face_net().state_dict(),
        },
        p,
    )


CHECKPOINTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # refused, saying what to save instead (torch's own line offered weights_only=False, then broke off)
    "pickled-module": (lambda p: _save(tiny_face_net(), p), "torch.save(model.state_dict(), PATH)"),
    "random-bytes": (lambda p: _bytes(os.urandom(4096), p), "cannot load weights"),
    "empty": (lambda p: _bytes(b"", p), "cannot load weights"),
    "truncated-zip": (lambda p: _bytes(_good(p).read_bytes()[:3000], p), "cannot load weights"),
    "nan-weights": (_nan_weights, "NaN or infinite embeddings"),
    "wrong-architecture": (lambda p: _save({"fc.weight": torch.zeros(3, 3)}, p), "do not fit"),
    "model-field-names-a-function": (_crafted_model_field, "os:abort"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_bad_checkpoint(case: str, capsys, tmp_path: Path) -> None:
    make, fragment = CHECKPOINTS[case]
    weights = make(tmp_path / "w.pt")
    before = snapshot(tmp_path)
    r = run(capsys, *map(str, _eval("-w", weights, "--json", tmp_path / "r.json")))
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


def test_checkpoint_naming_a_function_is_refused_in_a_fresh_process(tmp_path: Path) -> None:
    """The crafted 'os:abort' would kill the process (exit -6) if it were called."""
    weights = _crafted_model_field(tmp_path / "w.pt")
    r = run_process(*map(str, _eval("-w", weights, "--json", tmp_path / "r.json")))
    assert_one_error(r, "os:abort")
    assert not (tmp_path / "r.json").exists()


SPECS: dict[str, tuple[bytes, str]] = {
    "binary": (b"\xff\xfe\x00\x01", "spec"),
    "not-json": (b"{ nope", "not valid JSON"),
    "std-nan": (
        b'{"schema_version":1,"name":"x","input_size":[112,112],"layout":"NCHW","channel_order":"RGB",'
        b'"mean":[0.5,0.5,0.5],"std":[NaN,0.5,0.5],"embedding_dim":32}',
        "NaN",
    ),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_bad_spec_file(case: str, capsys, tmp_path: Path) -> None:
    data, fragment = SPECS[case]
    spec = _bytes(data, tmp_path / "spec.json")
    before = snapshot(tmp_path)
    r = run(capsys, *map(str, _eval("--spec", spec, "--json", tmp_path / "r.json")))
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


PAIRS: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)) * 20, "not a text pairs file"),
    "nul-bytes": (b"2 3\n\x00\x00\x00\n", "NUL bytes"),
    "latin1": ("2 3\nJos\xe9 1 2\n".encode("latin-1"), "not UTF-8"),
    "negative-header": (b"-2 3\n", "header"),
    "zero-per-fold": (b"2 0\n", "header"),
    "absurd-folds": (b"99999999 1\n", "header"),
    "empty": (b"", "empty pairs file"),
}


@pytest.mark.parametrize("case", list(PAIRS))
def test_bad_pairs_file(case: str, capsys, tmp_path: Path) -> None:
    data, fragment = PAIRS[case]
    pairs = _bytes(data, tmp_path / "pairs.txt")
    before = snapshot(tmp_path)
    r = run(
        capsys,
        "eval",
        "-m",
        MODEL,
        "--pairs",
        pairs,
        "--images",
        LFW / "aligned112",
        "--json",
        tmp_path / "r.json",
    )
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before
