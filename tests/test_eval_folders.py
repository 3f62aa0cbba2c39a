"""`edgeface eval` on artifacts and on identity-folder datasets, through the real CLI entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval_support import (
    LFW,
    aligned_dataset,
    raw_dataset,
    reference_artifact,
    reference_spec,
    strict_json,
)
from tests.test_bad_input_support import ROOT, assert_one_error, run


def test_raw_photos_through_detection_count_and_list_failures(capsys, tmp_path: Path) -> None:
    """20 raw photos of 4 identities, plus a blank wall and a truncated JPEG inside identity folders and one
    photo outside any: FNMR@FMR with intervals, rates at the shipped threshold, groups, a DET plot, and the
    images that gave no face named with their reason, never dropped silently."""
    out = tmp_path / "raw.json"
    r = run(capsys, "eval", "--model", reference_artifact(), "--data", raw_dataset(),
            "--groups", LFW / "gender.csv", "--bootstrap", "200", "--json", out)  # fmt: skip
    assert r.code == 0, r.err
    d = strict_json(out.read_text())
    assert isinstance(d, dict)
    assert d["data"]["identities"] == 4 and d["data"]["images"] == 22
    assert [Path(p).name for p in d["data"]["images_outside_identity_folders"]] == ["loose.jpg"]
    failed = {Path(f["image"]).name: f["reason"] for f in d["failed_images"]["images"]}
    assert set(failed) == {"blank_wall.jpg", "truncated.jpg"}
    assert "no face found" in failed["blank_wall.jpg"] and "cannot decode" in failed["truncated.jpg"]
    p = d["pairs"]
    # 4 x C(5,2) genuine pairs survive; the blank wall would have made 5 more with its own folder's photos
    assert p["genuine"] == 40 and p["genuine_lost"] == 5 + 5
    # C(20, 2) - 40 among the 20 usable photos; each failed image loses its 15 other-identity partners,
    # and the pair of the two failed images is lost too
    assert p["impostor"] == 150 and p["impostor_lost"] == 15 + 15 + 1 and not p["impostor_sampled"]
    f2 = d["fnmr_at_fmr"]["1e-02"]
    assert f2["genuine"] == 40 and f2["impostor"] == 150 and f2["resolved"] and f2["false_matches"] == 1
    assert d["fnmr_at_fmr"]["1e-03"]["resolved"] is False and d["fnmr_at_fmr"]["1e-04"]["resolved"] is False
    for key in ("1e-02", "1e-03", "1e-04"):
        row = d["fnmr_at_fmr"][key]
        assert row["ci95"] is not None and row["ci95"][0] <= row["fnmr"] <= row["ci95"][1] + 1e-12
    at = d["at_threshold"]
    assert at["source"] == "shipped" and at["threshold"] == pytest.approx(reference_spec().threshold)
    assert at["fnmr"]["n"] == 40 and at["fmr"]["n"] == 150
    assert at["fnmr_counting_failures"]["n"] == 50  # the 10 lost genuine pairs count as rejections
    assert at["fnmr"]["rate"] <= 0.1 and at["fmr"]["rate"] <= 0.02  # real faces, a real network
    assert set(d["groups"]["groups"]) <= {"F", "M"}
    assert (tmp_path / "raw.det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "blank_wall.jpg: no face found" in r.out and "FMR=1e-02" in r.out


def test_aligned_crops_sampled_impostors_are_reproducible(capsys, tmp_path: Path) -> None:
    data = aligned_dataset()  # 16 identities x 3 crops: 48 genuine, 1,080 impostor pairs
    args = ["eval", "--model", reference_artifact(), "--data", data, "--aligned", "--impostors", "500",
            "--seed", "5", "--bootstrap", "100"]  # fmt: skip
    r1 = run(capsys, *args, "--json", tmp_path / "a.json", "--det", tmp_path / "curve.png")
    r2 = run(capsys, *args, "--json", "-")
    assert r1.code == 0 and r2.code == 0, r1.err + r2.err
    a, b = strict_json((tmp_path / "a.json").read_text()), strict_json(r2.out)
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a["pairs"] == b["pairs"] and a["fnmr_at_fmr"] == b["fnmr_at_fmr"]
    assert a["pairs"]["genuine"] == 48 and a["pairs"]["impostor"] == 500 and a["pairs"]["impostor_sampled"]
    assert a["pairs"]["impostor_possible"] == 1080 and a["failed_images"]["count"] == 0
    assert a["fnmr_at_fmr"]["1e-02"]["resolved"] and a["fnmr_at_fmr"]["1e-02"]["false_matches"] == 5
    assert a["fnmr_at_fmr"]["1e-02"]["fnmr"] <= 0.1  # aligned LFW crops: the network's home ground
    assert a["settings"]["model_kind"] == "artifact" and a["settings"]["aligned"] is True
    assert (tmp_path / "curve.png").is_file()


def test_an_artifact_is_evaluated_without_torch(tmp_path: Path) -> None:
    """Given an artifact, eval imports no torch (a fresh interpreter; this one has torch loaded)."""
    out = tmp_path / "r.json"
    code = (
        "import sys\n"
        "from edgeface.cli.main import main\n"
        f"rc = main(['eval', '--model', {str(reference_artifact())!r}, '--data', {str(aligned_dataset())!r}, "
        f"'--aligned', '--bootstrap', '10', '--json', {str(out)!r}])\n"
        "heavy = [m for m in ('torch', 'torch_pruning', 'litert_torch', 'onnx') if m in sys.modules]\n"
        "assert rc == 0 and not heavy, (rc, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert strict_json(out.read_text())["pairs"]["genuine"] == 48  # type: ignore[index]


def test_lfw_protocol_on_an_artifact(capsys, tmp_path: Path) -> None:
    """The LFW path takes an artifact as it takes a PyTorch model (same evaluate_lfw, artifact embedder)."""
    lines = (LFW / "pairs.txt").read_text().splitlines()[1:]
    body = [*lines[3000:3010], *lines[3300:3310], *lines[3600:3610], *lines[3900:3910]]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2 10\n" + "\n".join(body) + "\n")
    r = run(capsys, "eval", "--model", reference_artifact(), "--pairs", pairs, "--images", LFW / "aligned112",
            "--folds", "1-2", "--json", "-")  # fmt: skip
    assert r.code == 0, r.err
    d = strict_json(r.out)
    assert isinstance(d, dict)
    assert d["n_pairs"] == 40 and d["acc"] >= 0.9 and d["settings"]["model_kind"] == "artifact"


BAD = {
    "both data sources": (["--data", "DATA", "--pairs", "PAIRS", "--images", "IMAGES"], "not both"),
    "no data": ([], "give --pairs FILE and --images DIR"),
    "lfw root as data": (["--data", str(LFW)], "is an LFW root"),
    "flat folder": (["--data", "FLAT"], "no identity folders"),
    "one identity": (["--data", "ONE"], "impostor pairs need two"),
    "weights for an artifact": (["--data", "DATA", "--weights", "W.pt"], "carries its weights and spec"),
    "roc with data": (["--data", "DATA", "--roc", "x.png"], "--roc is for the LFW protocol"),
    "missing artifact": (["--data", "DATA", "--model", "nowhere.onnx"], "artifact not found"),
    "face all": (["--data", "DATA", "--face", "all"], "'--face'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line(case: str, capsys, tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "one" / "someone").mkdir(parents=True)
    (tmp_path / "one" / "someone" / "a.jpg").write_bytes(b"x")
    subst = {
        "DATA": str(aligned_dataset()),
        "PAIRS": str(LFW / "pairs.txt"),
        "IMAGES": str(LFW / "aligned112"),
        "FLAT": str(tmp_path / "flat"),
        "ONE": str(tmp_path / "one"),
    }
    extra, fragment = BAD[case]
    args = [subst.get(a, a) for a in extra]
    if "--model" not in args:
        args += ["--model", str(reference_artifact())]
    r = run(capsys, "eval", *args, "--json", tmp_path / "out.json")
    assert_one_error(r, fragment)
    assert not (tmp_path / "out.json").exists()


def test_errors_never_share_a_line_with_a_progress_bar(capsys, tmp_path: Path) -> None:
    """A corrupt image found while the embedding bar is drawn: the error starts a line of its own."""
    lines = (LFW / "pairs.txt").read_text().splitlines()[1:]
    body = [*lines[0:40], *lines[300:340], *lines[600:640], *lines[900:940]]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2 40\n" + "\n".join(body) + "\n")
    images = tmp_path / "aligned"
    for line in body:
        f = line.split()
        for name, i in ((f[0], f[1]), (f[-2], f[-1])) if len(f) == 4 else ((f[0], f[1]), (f[0], f[2])):
            src = LFW / "aligned112" / name / f"{name}_{int(i):04d}.jpg"
            (images / name).mkdir(parents=True, exist_ok=True)
            dest = images / name / src.name
            if not dest.exists():
                dest.symlink_to(src)
    victim = sorted(images.rglob("*.jpg"))[-1]
    victim.unlink()
    victim.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)  # a JPEG header and nothing else
    r = run(capsys, "eval", "--model", reference_artifact(), "--pairs", pairs, "--images", images,
            "--folds", "1-2", "--batch-size", "8")  # fmt: skip
    assert r.code == 2
    assert "embedding:" in r.err  # the bar was drawn ...
    err_lines = r.err.split("\n")
    errors = [ln for ln in err_lines if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("error: cannot decode image"), r.err[-500:]


def test_a_pytorch_model_goes_through_the_same_pipeline(capsys, tmp_path: Path) -> None:
    """The PyTorch model behind the device pipeline (TorchFaceModel) scores the raw photos as its fp32 ONNX
    export does: same failures, same pairs, the same FNMR@FMR thresholds to float precision."""
    import torch

    args = ["--data", raw_dataset(), "--no-refine", "--bootstrap", "0", "--threads", "1", "--json", "-"]
    threads = torch.get_num_threads()  # --threads sets torch's pool for the process: give it back after
    try:
        t = run(capsys, "eval", "--model", "mobilefacenet", "--weights", LFW.parents[1] / "models" /
                "mobilefacenet_ms1m.pt", *args)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    a = run(capsys, "eval", "--model", reference_artifact(), *args)
    assert t.code == 0 and a.code == 0, t.err + a.err
    dt, da = strict_json(t.out), strict_json(a.out)
    assert isinstance(dt, dict) and isinstance(da, dict)
    assert dt["settings"]["model_kind"] == "pytorch" and dt["at_threshold"] is None  # ships no threshold
    assert dt["failed_images"] == da["failed_images"] and dt["pairs"] == da["pairs"]
    for key in ("1e-02", "1e-03"):
        assert dt["fnmr_at_fmr"][key]["threshold"] == pytest.approx(
            da["fnmr_at_fmr"][key]["threshold"], abs=1e-4
        )
        assert dt["fnmr_at_fmr"][key]["fnmr"] == da["fnmr_at_fmr"][key]["fnmr"]
