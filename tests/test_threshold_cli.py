"""`edgeface threshold`: calibrated on the user's impostor pairs, written into the embedded spec and the
sidecar together (a failure changes neither), the data's size and reachable FMR recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgeface.spec import read_spec_json, spec_path_for
from tests.eval_support import LFW, aligned_dataset, embedded_onnx, strict_json
from tests.test_bad_input_support import assert_one_error, run, snapshot
from tests.test_runtime_support import SHARED


def _embedded(path: Path):
    import onnx
    from edgeface.converters.metadata import read_onnx_spec, read_tflite_spec

    if path.suffix == ".onnx":
        return read_onnx_spec(onnx.load(str(path)))
    return read_tflite_spec(path.read_bytes())


def test_onnx_threshold_rewritten_inside_and_beside(capsys, tmp_path: Path) -> None:
    art = embedded_onnx(tmp_path)
    args = ("threshold", art, "--data", aligned_dataset(), "--aligned", "--fmr", "1e-2")
    r = run(capsys, *args, "--confidence", "0", "--json")
    assert r.code == 0, r.err
    rec = strict_json(r.out)
    assert isinstance(rec, dict)
    inside, beside = _embedded(art), read_spec_json(spec_path_for(art))
    assert inside == beside  # one spec, two copies
    assert inside.threshold == pytest.approx(rec["threshold"]) and inside.threshold_far == 1e-2
    cal = inside.provenance["threshold_calibration"]
    assert cal["identities"] == 16 and cal["images"] == 48 and cal["impostor_pairs"] == 1080
    assert cal["genuine_pairs"] == 48 and cal["resolved"] and cal["false_matches"] <= 10
    assert cal["fmr_achieved"] <= 1e-2 and cal["fmr_reachable"] == pytest.approx(1 / 1080)
    # the same number from first principles: the artifact's own embeddings, every impostor pair
    from edgeface.runtime.backends import artifact_embedder, load_artifact

    from edgeface.eval.dataset import read_identity_folders

    data = read_identity_folders(aligned_dataset())
    e = artifact_embedder(load_artifact(art))(data.images)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    iu = np.triu_indices(len(e), 1)
    imp = np.sort(s[iu][data.identity[iu[0]] != data.identity[iu[1]]])[::-1]
    assert imp[10] < inside.threshold <= imp[9] + 1e-6  # 10 of 1,080 may pass (FMR 1e-2)
    assert cal["threshold_point"] == pytest.approx(inside.threshold) and cal["bootstrap_replicates"] == 0
    # the default: the 95 % people-level bound, from the same pairs, above the point estimate
    b = run(capsys, *args, "--json")
    assert b.code == 0, b.err
    bound = strict_json(b.out)
    from edgeface.eval.rates import threshold_at_fmr_bound

    ii = np.stack(iu, axis=1)[data.identity[iu[0]] != data.identity[iu[1]]]
    _, expected = threshold_at_fmr_bound(s[ii[:, 0], ii[:, 1]], data.identity[ii], 16, 1e-2, 0.95)
    assert bound["confidence"] == 0.95 and bound["threshold_point"] == pytest.approx(inside.threshold)
    assert bound["threshold"] == pytest.approx(expected) and bound["threshold"] > inside.threshold
    near = [int(np.count_nonzero(imp >= bound["threshold"] + d)) for d in (1e-6, -1e-6)]  # float32 here
    assert near[0] <= bound["false_matches"] <= near[1] and bound["false_matches"] < 10
    # and verify now uses it
    v = run(capsys, "verify", *data.images[:2], "--aligned", "--model", art, "--json")
    assert v.code == 0, v.err
    assert json.loads(v.out)["threshold"] == pytest.approx(bound["threshold"])


def test_too_few_impostors_for_the_target_is_said_and_recorded(capsys, tmp_path: Path) -> None:
    art = embedded_onnx(tmp_path)
    r = run(capsys, "threshold", art, "--data", aligned_dataset(), "--aligned", "--fmr", "1e-4")
    assert r.code == 0, r.err
    assert "warning: FMR 0.0001 needs at least 10,000 impostor pairs" in r.err and "gives 1,080" in r.err
    cal = _embedded(art).provenance["threshold_calibration"]
    assert cal["resolved"] is False and cal["false_matches"] == 0 and cal["fmr_target"] == 1e-4
    assert "smallest resolvable 9.3e-04" in r.out


def test_tflite_threshold_rewritten_inside_and_beside(capsys, tmp_path: Path) -> None:
    from edgeface.converters.metadata import embed_tflite_spec

    from tests.test_runtime_tflite import SPEC, build_tflite

    art = tmp_path / "poolfc.tflite"
    art.write_bytes(embed_tflite_spec(build_tflite(False), SPEC))
    spec_path_for(art).write_text(SPEC.to_json() + "\n")
    r = run(capsys, "threshold", art, "--data", aligned_dataset(), "--aligned", "--fmr", "1e-2")
    assert r.code == 0, r.err
    inside, beside = _embedded(art), read_spec_json(spec_path_for(art))
    assert inside == beside and inside.threshold != SPEC.threshold and inside.threshold_far == 1e-2
    assert inside.provenance["threshold_calibration"]["previous_threshold"] == SPEC.threshold


def test_a_failed_write_changes_neither_file(capsys, tmp_path: Path) -> None:
    """The sidecar cannot be written (it is a link to /dev/full): the new artifact was already staged, and
    is thrown away; both files stay exactly as they were."""
    art = embedded_onnx(tmp_path / "a")
    side = spec_path_for(art)
    side.unlink()
    os.symlink("/dev/full", side)
    before = snapshot(tmp_path)
    r = run(capsys, "threshold", art, "--data", aligned_dataset(), "--aligned", "--fmr", "1e-2")
    assert_one_error(r, "no space left on the device")
    assert snapshot(tmp_path) == before and side.is_symlink()
    assert not [p for p in art.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_lfw_root_calibrates_on_the_compression_split_only() -> None:
    from edgeface.converters.threshold import load_calibration_data

    from edgeface.data.lfw import read_pairs, test_identities

    data = load_calibration_data(LFW)
    assert len(data.images) == 6922 and len(data.names) == 3554
    assert not set(data.names) & test_identities(read_pairs(LFW / "pairs.txt"))


def test_bad_input(capsys, tmp_path: Path) -> None:
    art = embedded_onnx(tmp_path)
    before = snapshot(tmp_path)
    assert_one_error(run(capsys, "threshold", art, "--data", tmp_path / "nowhere"), "data folder not found")
    assert_one_error(run(capsys, "threshold", tmp_path / "x.onnx", "--data", aligned_dataset()), "not found")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    assert_one_error(run(capsys, "threshold", art, "--data", tmp_path / "flat"), "no identity folders")
    assert snapshot(tmp_path / "model.onnx") == {k: v for k, v in before.items() if "model.onnx" in k}


def test_an_artifact_in_a_pack_keeps_the_pack_valid(capsys, tmp_path: Path) -> None:
    """A new threshold changes the artifact's bytes and its sidecar: the pack's manifest is rewritten with
    them (renamed in together), so `pack --check` and `--model PACK` still pass afterwards."""
    art = embedded_onnx(tmp_path / "src")
    yunet = SHARED / "models" / "face_detection_yunet_2026may.onnx"
    pack = tmp_path / "pack"
    assert run(capsys, "pack", art, "-o", pack, "--detector", yunet).code == 0
    packed = pack / art.name
    before = json.loads((pack / "edgeface-pack.json").read_text())["files"][art.name]["sha256"]
    r = run(capsys, "threshold", packed, "--data", aligned_dataset(), "--aligned", "--fmr", "1e-2")
    assert r.code == 0, r.err
    after = json.loads((pack / "edgeface-pack.json").read_text())["files"][art.name]["sha256"]
    assert after != before
    check = run(capsys, "pack", "--check", pack)
    assert check.code == 0, check.err
    data = sorted(Path(aligned_dataset()).glob("*/*"))[:2]
    v = run(capsys, "verify", *data, "--aligned", "--model", pack, "--json")
    assert v.code == 0, v.err
    assert json.loads(v.out)["threshold"] == pytest.approx(_embedded(packed).threshold)
