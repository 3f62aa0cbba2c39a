"""`edgeface eval` through the real CLI entry point, on the real model and real LFW faces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeface.cli.main import main
from edgeface.data.lfw import read_pairs
from edgeface.eval.groups import read_groups

PER_FOLD = 5  # genuine and impostor pairs taken from each fold for the fast subset


def _subset(lfw: Path, tmp_path: Path, per_fold: int = PER_FOLD) -> Path:
    """A valid View 2 file: the first `per_fold` same and different pairs of each of the 10 real folds."""
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    out = [f"10 {per_fold}"]
    for fold in range(10):
        block = lines[fold * 600 : (fold + 1) * 600]
        out += block[:per_fold] + block[300 : 300 + per_fold]
    path = tmp_path / "pairs_subset.txt"
    path.write_text("\n".join(out) + "\n")
    return path


def _args(lfw: Path, weights: Path, pairs: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", "mobilefacenet", "--weights", str(weights), "--pairs", str(pairs),
        "--images", str(lfw / "aligned112"), *extra,
    ]  # fmt: skip


def test_eval_subset_writes_json_roc_and_table(lfw, mfn_weights, tmp_path, capsys) -> None:
    pairs = _subset(lfw, tmp_path)
    out = tmp_path / "eval.json"
    gender = lfw / "gender.csv"
    args = _args(
        lfw, mfn_weights, pairs, "--folds", "6-7", "--flip", "--groups", str(gender), "--json", str(out)
    )
    assert main(args) == 0
    captured = capsys.readouterr()
    data = json.loads(out.read_text())
    assert {"acc", "acc_std", "tar_at_far", "threshold", "n_pairs", "groups"} <= set(data)
    assert data["n_pairs"] == 4 * PER_FOLD
    assert set(data["tar_at_far"]) == {"1e-03", "1e-02"}
    # 20 easy LFW pairs: a correctly preprocessed MobileFaceNet gets nearly all right, a broken one ~50 %
    assert data["acc"] >= 0.9
    assert 0.0 < data["threshold"] < 1.0
    # per-group counts agree with counting the subset's pairs by hand
    groups = read_groups(gender)
    selected = [p for p in read_pairs(pairs) if p.fold in (6, 7)]
    n_f_genuine = sum(1 for p in selected if p.same and groups.get(p.identities[0]) == "F")
    got = data["groups"]["groups"].get("F", {"fnmr": {"n": 0}})["fnmr"]["n"]
    assert got == n_f_genuine
    roc = tmp_path / "eval.roc.png"
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in captured.out and "TAR@FAR=1e-03" in captured.out and "FNMR" in captured.out
    assert f"{data['acc'] * 100:.2f} %" in captured.out  # percent in the table, fraction in the JSON


def test_eval_of_a_model_that_flattens_with_view(lfw, tmp_path, capsys) -> None:
    """`x.view(x.size(0), -1)` cannot run on the channels_last tensors eval uses for speed; such a model
    used to end in an internal failure, now it is evaluated in NCHW (on a 112x96 input here)."""
    pairs = _subset(lfw, tmp_path, per_fold=2)
    args = ["eval", "--model", "tests._awkward_models:prelu_view_net", "--pairs", str(pairs)]
    args += ["--images", str(lfw / "aligned112"), "--folds", "6-7", "--json", str(tmp_path / "e.json")]
    assert main(args) == 0, capsys.readouterr().err[-500:]
    assert json.loads((tmp_path / "e.json").read_text())["n_pairs"] == 8


def test_eval_json_to_stdout_is_not_mixed_with_progress(lfw, mfn_weights, tmp_path, capsys) -> None:
    pairs = _subset(lfw, tmp_path, per_fold=3)
    roc = tmp_path / "curve.png"
    args = _args(
        lfw, mfn_weights, pairs, "--folds", "1-2", "--json", "-", "--roc", str(roc), "--batch-size", "4"
    )
    assert main(args) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout is exactly one JSON document
    assert data["n_pairs"] == 12 and data["groups"] is None
    assert data["settings"]["folds"] == [1, 2] and data["settings"]["flip"] is False
    assert roc.is_file()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _missing_image_pairs(lfw: Path, tmp_path: Path) -> Path:
    pairs = _subset(lfw, tmp_path)
    lines = pairs.read_text().splitlines()
    lines[-1] = "Nobody_Atall 1 Aaron_Peirsol 1"  # last impostor line of fold 10
    return _write(tmp_path, "missing.txt", "\n".join(lines) + "\n")


ERROR_CASES = {
    # case: (argument changes, expected fragment of the one-line error)
    "missing image": ({"--pairs": "missing", "--folds": "9-10"}, "Nobody_Atall/Nobody_Atall_0001.jpg"),
    "malformed pairs": ({"--pairs": "malformed"}, "expected 'name i j'"),
    "unknown model": ({"--model": "resnet9000"}, "resnet9000"),
    "factory does not import": ({"--model": "no_such_package.nets:build"}, "no_such_package"),
    "weights do not fit": ({"--model": "iresnet18"}, "do not fit"),
    "folds not in file": ({"--folds": "11-12"}, "not in the pairs file"),
    "single fold": ({"--folds": "6"}, "at least two folds"),
    "unreadable groups": ({"--groups": "badgroups"}, "identity,group"),
    "images folder missing": ({"--images": "nowhere"}, "not found"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_eval_bad_input_is_one_line_error(case, lfw, mfn_weights, tmp_path, capsys) -> None:
    changes, fragment = ERROR_CASES[case]
    files = {
        "missing": lambda: _missing_image_pairs(lfw, tmp_path),
        "malformed": lambda: _write(tmp_path, "bad.txt", "10 300\nAbel_Pacheco 1\n"),
        "badgroups": lambda: _write(tmp_path, "g.csv", "name;sex\nAbel_Pacheco;M\n"),
        "nowhere": lambda: tmp_path / "nowhere",
    }
    opts = {
        "--model": "mobilefacenet",
        "--weights": str(mfn_weights),
        "--pairs": str(_subset(lfw, tmp_path)),
        "--images": str(lfw / "aligned112"),
        "--folds": "6-7",
        "--json": str(tmp_path / "out.json"),
    }
    for key, value in changes.items():
        opts[key] = str(files[value]()) if value in files else value
    args = ["eval"] + [x for kv in opts.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and fragment in err[-1], err
    assert not (tmp_path / "out.json").exists()  # never a half-written report
    assert not list(tmp_path.glob(".out.json.*"))


def test_acceptance_subset_of_the_test_folds_with_flip(lfw, mfn_weights, tmp_path, capsys) -> None:
    """MobileFaceNet on the first 60 genuine + 60 impostor pairs of each test fold (6-10), with flip.

    Measured: 99.00 % (600 pairs), TAR@FAR=1e-3 98.33 % (100 pairs per fold gave 99.10 % / 98.80 % and made
    this the suite's slowest test). The full 3,000-pair acceptance number (99.37 %) is a benchmark, not a
    test (docs/evaluation.md has its command): it embeds 7,780 faces, minutes on a busy CI machine. A model
    that lost 1 pp of accuracy, or mis-read the pairs, would fail here."""
    out = tmp_path / "eval.json"
    args = _args(lfw, mfn_weights, _subset(lfw, tmp_path, per_fold=60), "--folds", "6-10", "--flip",
                 "--groups", str(lfw / "gender.csv"), "--json", str(out))  # fmt: skip
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["n_pairs"] == 600
    assert data["acc"] >= 0.985, data
    assert data["tar_at_far"]["1e-03"] >= 0.975, data
    g = data["groups"]["groups"]
    counts = (g["F"]["fnmr"]["n"], g["M"]["fnmr"]["n"], g["F"]["fmr"]["n"], g["M"]["fmr"]["n"])
    assert counts == (96, 204, 25, 172)
