"""Batch verbs and aligned inputs: `verify --pairs`, `enroll --from-dir`, `--aligned`, and an artifact
without a threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.eval_support import (
    no_threshold_onnx,
    raw_dataset,
    reference_artifact,
    split_by_identity,
    strict_json,
    tiny_grey,
)
from tests.test_bad_input_support import assert_one_error, run, snapshot
from tests.test_runtime_support import raw

CROWD = raw("Benjamin_Netanyahu", 1)  # three faces: --face auto warns once per time it is embedded


def test_verify_pairs_one_json_line_per_pair_each_image_embedded_once(capsys, tmp_path: Path) -> None:
    a, b, c = raw("Bob_Hope", 1), raw("Bob_Hope", 2), raw("Anna_Kournikova", 1)
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "wall.png"), np.full((200, 200, 3), 90, np.uint8))
    listing = tmp_path / "pairs.tsv"
    listing.write_text(
        "# probe\treference\n"
        f"{a}\t{b}\n{a}\t{c}\n{CROWD}\t{a}\n\n{CROWD}\t{b}\n{CROWD}\t{c}\n"
        f"sub/wall.png\t{a}\n"  # relative to the list's folder; no face in it
    )
    r = run(capsys, "verify", "--pairs", listing, "--model", reference_artifact())
    assert r.code == 0, r.err
    rows = [strict_json(line) for line in r.out.splitlines()]
    assert len(rows) == 6
    assert [Path(x["image1"]).name for x in rows] == [a.name, a.name, CROWD.name, CROWD.name, CROWD.name,
                                                      "wall.png"]  # fmt: skip
    assert "no face found" in rows[5]["error"] and "match" not in rows[5]
    assert rows[0]["match"] is True and rows[1]["match"] is False
    assert r.err.count("3 faces found") == 1  # the crowd photo was embedded once for its three pairs
    assert "warning: 1 of 6 pair(s) have an image without a usable face" in r.err
    # the same numbers as one verify per pair
    one = run(capsys, "verify", CROWD, c, "--model", reference_artifact(), "--json")
    assert json.loads(one.out)["score"] == pytest.approx(rows[4]["score"], abs=1e-6)


def test_verify_pairs_bad_lists(capsys, tmp_path: Path) -> None:
    a = raw("Bob_Hope", 1)
    cases = {
        "missing.tsv": (f"{a}\t{tmp_path / 'nope.jpg'}\n", "missing.tsv:1: image not found"),
        "three.tsv": (f"{a}\t{a}\t{a}\n", "three.tsv:1: expected two image paths"),
        "empty.tsv": ("# nothing\n", "no pairs"),
    }  # fmt: skip
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        assert_one_error(run(capsys, "verify", "--pairs", tmp_path / name, "--model", reference_artifact()),
                         fragment)  # fmt: skip
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00a")
    assert_one_error(run(capsys, "verify", "--pairs", tmp_path / "bin.tsv", "--model", reference_artifact()),
                     "not a text pairs list")  # fmt: skip
    assert_one_error(run(capsys, "verify", a, a, "--pairs", tmp_path / "three.tsv", "--model",
                         reference_artifact()), "not both")  # fmt: skip
    assert_one_error(run(capsys, "verify", a, "--model", reference_artifact()), "give two images")


def test_no_threshold_needs_one_from_the_command_line(capsys, tmp_path: Path) -> None:
    art = no_threshold_onnx(tmp_path)
    a, b = raw("Bob_Hope", 1), raw("Bob_Hope", 2)
    r = run(capsys, "verify", a, b, "--model", art)
    assert_one_error(r, "has no calibrated threshold")
    assert "pass --threshold" in r.err and "edgeface threshold" in r.err
    listing = tmp_path / "p.tsv"
    listing.write_text(f"{a}\t{b}\n")
    assert_one_error(run(capsys, "verify", "--pairs", listing, "--model", art), "has no calibrated threshold")
    ok = run(capsys, "verify", a, b, "--model", art, "--threshold", "0.3", "--json")
    assert ok.code == 0 and json.loads(ok.out)["threshold"] == 0.3


def test_enroll_from_dir_one_transaction_per_identity_and_a_summary(capsys, tmp_path: Path) -> None:
    data = tmp_path / "people"
    shutil.copytree(raw_dataset(), data)
    bad = data / "bad\nname"
    bad.mkdir()
    shutil.copy(raw("Bob_Hope", 1), bad / "x.jpg")
    g = tmp_path / "g.sqlite"
    r = run(capsys, "enroll", "--from-dir", data, "--model", reference_artifact(), "--gallery", g, "--json")
    assert r.code == 0, r.err
    d = strict_json(r.out)
    assert isinstance(d, dict)
    names = sorted(x["name"] for x in d["identities"])
    assert len(names) == 4 and d["templates_added"] == 20  # 4 identities x 5 photos
    why = {Path(s["image"]).name: s["reason"] for s in d["skipped"]}
    assert "no face found" in why["blank_wall.jpg"] and "cannot decode" in why["truncated.jpg"]
    assert why["loose.jpg"] == "not in an identity folder"
    assert why["x.jpg"] == "identity name refused"
    assert "control characters" in d["skipped_identities"][0]["reason"]
    listed = run(capsys, "gallery", "list", "--gallery", g, "--json")
    assert sorted(i["name"] for i in json.loads(listed.out)["identities"]) == names
    # the human summary groups the reasons
    r2 = run(
        capsys, "enroll", "--from-dir", data, "--model", reference_artifact(), "--gallery", tmp_path / "h.db"
    )
    assert "enrolled 20 template(s) for 4 identities" in r2.out and "skipped 4 image(s)" in r2.out
    before = snapshot(g)
    assert_one_error(run(capsys, "enroll", "--from-dir", data, "--name", "x", "--model", reference_artifact(),
                         "--gallery", g), "not both")  # fmt: skip
    assert_one_error(run(capsys, "enroll", "--model", reference_artifact(), "--gallery", g), "--name NAME")
    assert snapshot(g) == before


def test_aligned_identification_of_tiny_grey_crops_without_a_detector(capsys, tmp_path: Path) -> None:
    """23x28 greyscale thumbnails (AT&T proportions) of 10 identities: YuNet finds no face in them, but as
    aligned crops (upscaled with the aspect ratio kept, no detector loaded: --detector points nowhere) each
    probe's nearest identity is the right one."""
    chosen = [(k, v) for k, v in split_by_identity().items() if len(v) >= 2][:10]
    for name, paths in chosen:
        tiny_grey(paths[0], tmp_path / "gallery" / name / "g.png")
        tiny_grey(paths[1], tmp_path / "probe" / f"{name}.png")
    g = tmp_path / "g.sqlite"
    art = reference_artifact()
    nowhere = tmp_path / "no-detector.onnx"
    probe = tmp_path / "probe" / f"{chosen[0][0]}.png"
    assert_one_error(run(capsys, "verify", probe, probe, "--model", art), "no face")  # through detection
    r = run(capsys, "enroll", "--from-dir", tmp_path / "gallery", "--aligned", "--allow-poor-quality",
            "--model", art, "--gallery", g, "--detector", nowhere)  # fmt: skip
    assert r.code == 0 and "enrolled 10 template(s) for 10 identities" in r.out, r.err
    right = 0
    for name, _ in chosen:
        out = run(capsys, "identify", tmp_path / "probe" / f"{name}.png", "--aligned", "--model", art,
                  "--gallery", g, "--detector", nowhere, "--json")  # fmt: skip
        assert out.code == 0, out.err
        d = strict_json(out.out)
        assert isinstance(d, dict)
        assert d["face"]["aligned"] is True and d["face"]["detector_score"] is None
        assert d["face"]["box"] == [0.0, 0.0, 23.0, 28.0]
        right += d["candidates"][0]["name"] == name
    assert right >= 9, right  # measured: 10 of 10


def test_aligned_verify_takes_the_crop_as_it_is(capsys) -> None:
    from tests.test_runtime_support import LFW

    a = LFW / "aligned112" / "Bob_Hope" / "Bob_Hope_0001.jpg"
    b = LFW / "aligned112" / "Bob_Hope" / "Bob_Hope_0002.jpg"
    r = run(capsys, "verify", a, b, "--aligned", "--model", reference_artifact(), "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["match"] is True and "detect" not in d["timings_ms"]
    assert [f["aligned"] for f in d["faces"]] == [True, True]


def test_embed_many_runs_detection_on_worker_threads_and_keeps_order_and_errors(tmp_path: Path) -> None:
    """The batch path (verify --pairs, enroll --from-dir) detects and aligns on worker threads, each with
    its own detector; results must be exactly the one-at-a-time ones, in order, errors in place."""
    import threading

    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.pipeline import Pipeline

    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((200, 200, 3), 90, np.uint8))
    images = [raw("Bob_Hope", 1), CROWD, wall, raw("Anna_Kournikova", 1), raw("Bob_Hope", 2), CROWD]
    warned_on: list[str] = []
    pipe = Pipeline(
        load_artifact(reference_artifact(), num_threads=1),
        warn=lambda m: warned_on.append(threading.current_thread().name),
    )
    one_by_one = []
    for p in images:
        try:
            one_by_one.append(pipe.embed_faces(p))
        except Exception as e:  # noqa: BLE001 - compared below, whatever it is
            one_by_one.append(e)
    sequential_warnings = len(warned_on)  # several faces in the crowd photo (twice) and others
    assert sequential_warnings >= 2 and set(warned_on) == {"MainThread"}
    warned_on.clear()
    batch = list(pipe.embed_many(images, workers=3))
    assert [p for p, _ in batch] == images
    assert len(warned_on) == sequential_warnings
    assert all(n.startswith("edgeface-locate") for n in warned_on)
    for (_, got), want in zip(batch, one_by_one, strict=True):
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
        else:
            assert not isinstance(got, Exception)
            assert [f.face.box for f in got] == [f.face.box for f in want]
            np.testing.assert_array_equal(
                np.stack([f.embedding for f in got]), np.stack([f.embedding for f in want])
            )


@pytest.mark.parametrize("aligned", [False, True])
def test_batch_verbs_give_the_detectors_the_threads_and_the_network_one(aligned: bool) -> None:
    """verify --pairs / enroll --from-dir: with detection, the network runs on one thread beside `--threads`
    detection workers (its own pool would compete with them); aligned crops give the network the threads."""
    import threading

    from edgeface.cli.runtime_cmd import _pipeline

    pipe = _pipeline(str(reference_artifact()), None, False, 2, False, False, aligned=aligned, batch=True)
    assert pipe.artifact.num_threads == (2 if aligned else 1)
    if aligned:
        return
    assert pipe.workers == 2
    seen: set[str] = set()
    pipe.warn = lambda m: seen.add(threading.current_thread().name)
    list(pipe.embed_many([CROWD, CROWD]))  # several faces: a warning per image, from the detecting thread
    assert seen and all(n.startswith("edgeface-locate") for n in seen)
