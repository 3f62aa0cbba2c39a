"""Packs (edgeface.runtime.pack): written by `edgeface pack`, run with `--model PACK` by every runtime verb
with the pack's own detector, and refused with one error line when a file was changed, truncated, linked
or named to point outside the pack, or when an archive tries the same. Real artifact, real faces."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from edgeface.runtime import pack_archive
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.pack import MANIFEST, open_pack
from edgeface.runtime.pack_archive import write_archive
from edgeface.runtime.pack_write import LicenseSource, write_pack

from edgeface import __version__
from edgeface.cli.main import main
from tests.test_runtime_support import SHARED, int8_io_artifact, raw, reference_artifact
from tests.test_watch_support import main_scene

YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
LICENSE = SHARED / "models" / "LICENSE.mobilefacenet_ms1m"


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True)
def no_detector_elsewhere(monkeypatch, tmp_path_factory):
    """The detector can only come from the pack: $EDGEFACE_YUNET points nowhere (the repository's default
    path still exists, which is why `test_without_a_pack_the_default_detector_is_used` checks the env)."""
    monkeypatch.setenv("EDGEFACE_YUNET", str(tmp_path_factory.getbasetemp() / "no-detector-here.onnx"))


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    """A pack of two real artifacts (the reference fp32 ONNX, default, and its int8-I/O twin), as a folder,
    a .tar.gz and a .zip."""
    d = tmp_path_factory.mktemp("packs")
    ref, int8io = reference_artifact(), int8_io_artifact()
    code = main(
        [
            *("pack", str(ref), str(int8io), "-o", str(d / "p"), "--detector", str(YUNET)),
            *("--license", str(LICENSE), "--default", ref.name, "--archive", str(d / "p.tar.gz")),
        ]
    )
    assert code == 0
    write_archive(open_pack(d / "p"), d / "p.zip")
    return {"dir": d / "p", "tgz": d / "p.tar.gz", "zip": d / "p.zip", "ref": ref, "int8io": int8io}


@pytest.fixture
def copy(packed, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(packed["dir"], dest)
    return dest


def manifest(p: Path) -> dict:
    return json.loads((p / MANIFEST).read_text())


def test_manifest_lists_every_file_with_hash_size_version_and_licences(packed, capsys) -> None:
    p = packed["dir"]
    m = manifest(p)
    on_disk = {f.relative_to(p).as_posix() for f in p.rglob("*") if f.is_file()} - {MANIFEST}
    assert (
        set(m["files"])
        == on_disk
        == {
            "mobilefacenet_ms1m_fp32.onnx",
            "mobilefacenet_ms1m_fp32.onnx.json",
            "mobilefacenet_int8io.onnx",
            "mobilefacenet_int8io.onnx.json",
            YUNET.name,
            "licenses/LICENSE.mobilefacenet_ms1m",
            "licenses/LICENSE.yunet",
        }
    )
    for name, entry in m["files"].items():
        data = (p / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert (p / YUNET.name).read_bytes() == YUNET.read_bytes()
    assert m["format"] == "edgeface-pack" and m["version"] == 1 and m["edgeface_version"] == __version__
    assert m["default_artifact"] == "mobilefacenet_ms1m_fp32.onnx"
    assert m["detector"] == {"file": YUNET.name, "kind": "yunet"}
    lic = {x["file"]: x for x in m["licenses"]}
    model_lic = lic["licenses/LICENSE.mobilefacenet_ms1m"]
    assert set(model_lic["covers"]) == {"mobilefacenet_ms1m_fp32.onnx", "mobilefacenet_int8io.onnx"}
    assert "--license" in model_lic["origin"]
    assert lic["licenses/LICENSE.yunet"]["covers"] == [YUNET.name]
    assert "MIT" in (p / "licenses/LICENSE.yunet").read_text()
    # the sidecar is the spec the runtime uses
    spec = json.loads((p / "mobilefacenet_int8io.onnx.json").read_text())
    assert spec["quantization"]["input"]["dtype"] == "int8"
    code, out, err = run(capsys, "pack", "--check", p, "--json")
    assert code == 0 and json.loads(out)["verified"] is True and json.loads(out)["files"] == 7, err


def test_verify_with_a_pack_folder_or_archive_uses_the_packs_detector(packed, capsys) -> None:
    a, b = raw("Jimmy_Carter", 1), raw("Jimmy_Carter", 4)
    code, out, err = run(capsys, "verify", a, b, "--model", packed["ref"], "--json")
    assert code == 2 and "face detector model not found" in one_error(err)  # outside a pack: no detector
    code, out, err = run(capsys, "verify", a, b, "--model", packed["ref"], "--detector", YUNET, "--json")
    assert code == 0, err
    direct = json.loads(out)
    for kind in ("dir", "tgz", "zip"):
        code, out, err = run(capsys, "verify", a, b, "--model", packed[kind], "--json")
        assert code == 0, err
        got = json.loads(out)
        assert got["score"] == direct["score"] and got["match"] is True
        assert got["model"].endswith("mobilefacenet_ms1m_fp32.onnx")
        # two artifacts in the pack: which one ran is said, once, on stderr
        notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
        assert len(notes) == 1 and "using mobilefacenet_ms1m_fp32.onnx" in notes[0], err
    code, out, err = run(
        capsys, "verify", a, b, "--model", packed["tgz"], "--artifact", "mobilefacenet_int8io.onnx", "--json"
    )
    assert code == 0 and "note:" not in err and json.loads(out)["model"].endswith("mobilefacenet_int8io.onnx")
    assert json.loads(out)["score"] != direct["score"]  # the int8-I/O twin really ran
    code, _, err = run(capsys, "verify", a, b, "--model", packed["dir"], "--artifact", "nope.onnx")
    assert code == 2 and "has no artifact 'nope.onnx'" in one_error(err)
    code, _, err = run(capsys, "verify", a, b, "--model", packed["ref"], "--artifact", "x.onnx")
    assert code == 2 and "is not a pack" in one_error(err)
    # an artifact inside a pack folder, named by its own path, is checked and brings the detector too
    code, out, err = run(capsys, "verify", a, b, "--model", packed["dir"] / "mobilefacenet_ms1m_fp32.onnx")
    assert code == 0 and out.startswith("same person"), err


def test_enroll_identify_profile_and_watch_take_a_pack(packed, tmp_path, capsys) -> None:
    gallery = tmp_path / "g.sqlite"
    for name in ("Jimmy_Carter", "Anna_Kournikova"):
        code, _, err = run(
            capsys, "enroll", "--name", name, raw(name, 1), raw(name, 2), "--model", packed["dir"],
            "--gallery", gallery,
        )  # fmt: skip
        assert code == 0, err
    # the archive holds the same artifact (same SHA-256), so the gallery accepts it
    code, out, err = run(
        capsys, "identify", raw("Jimmy_Carter", 4), "--model", packed["zip"], "--gallery", gallery, "--json"
    )
    assert code == 0 and json.loads(out)["identity"] == "Jimmy_Carter", err
    code, out, err = run(
        capsys, "profile", packed["tgz"], "--image", raw("Bob_Hope", 1), "--runs", 2, "--warmup", 0,
        "--no-operators", "--json",
    )  # fmt: skip
    assert code == 0, err
    prof = json.loads(out)
    assert prof["backend"] == "onnxruntime" and set(prof["stages_ms"]) >= {"detect", "embed"}
    video = main_scene().write(tmp_path / "v.avi", frames=6)
    code, out, err = run(capsys, "watch", "--model", packed["dir"], "--video", video, "--detect-every", 3)
    assert code == 0, err
    assert any(json.loads(line)["event"] == "track_start" for line in out.splitlines())


def test_load_artifact_takes_a_pack_and_gives_its_detector(packed) -> None:
    art = load_artifact(packed["tgz"], artifact="mobilefacenet_int8io.onnx")
    assert art.pack is not None and art.path.name == "mobilefacenet_int8io.onnx"
    assert art.detector_path is not None and art.detector_path.read_bytes() == YUNET.read_bytes()
    assert load_artifact(packed["ref"]).pack is None


def _flip_byte(path: Path, at: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[min(at, len(data) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


TAMPER = {
    "artifact byte": (lambda p: _flip_byte(p / "mobilefacenet_ms1m_fp32.onnx"), "does not match its SHA-256"),
    "spec byte": (lambda p: _flip_byte(p / "mobilefacenet_ms1m_fp32.onnx.json", 40), "does not match"),
    "detector byte": (lambda p: _flip_byte(p / YUNET.name), "does not match its SHA-256"),
    "artifact truncated": (
        lambda p: os.truncate(p / "mobilefacenet_ms1m_fp32.onnx", 4096),
        "is 4096 bytes but the manifest says",
    ),
    "detector missing": (lambda p: (p / YUNET.name).unlink(), "is missing"),
    "detector symlinked": (
        lambda p: ((p / YUNET.name).unlink(), (p / YUNET.name).symlink_to(YUNET)),
        "is a symbolic link",
    ),
    "artifact replaced by a folder": (
        lambda p: (
            (p / "mobilefacenet_ms1m_fp32.onnx").unlink(),
            (p / "mobilefacenet_ms1m_fp32.onnx").mkdir(),
        ),
        "not a regular file",
    ),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_a_changed_truncated_or_linked_file_is_one_error_line(copy, capsys, case) -> None:
    change, message = TAMPER[case]
    change(copy)
    code, out, err = run(capsys, "verify", raw("Bob_Hope", 1), raw("Bob_Hope", 2), "--model", copy)
    assert code == 2 and out == "" and message in one_error(err) and "pack " in err


def test_check_covers_every_file_the_run_does_not_read(copy, capsys) -> None:
    _flip_byte(copy / "licenses" / "LICENSE.yunet", 10)
    code, _, err = run(capsys, "verify", raw("Bob_Hope", 1), raw("Bob_Hope", 2), "--model", copy)
    assert code == 0, err  # a licence is not loaded to run ...
    code, _, err = run(capsys, "pack", "--check", copy)
    assert code == 2 and "LICENSE.yunet does not match" in one_error(err)  # ... but --check sees it
    shutil.rmtree(copy / "licenses")
    (copy / "licenses").symlink_to(SHARED / "models")
    code, _, err = run(capsys, "pack", "--check", copy)
    assert code == 2 and "symbolic link" in one_error(err)


ESCAPES = ["../outside.onnx", "/etc/passwd", "a/../../x.onnx", ".hidden.onnx", "C:x.onnx", "a\\b.onnx", ""]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_manifest_cannot_name_a_file_outside_the_pack(copy, capsys, tmp_path, name) -> None:
    """Whatever the manifest says, no path outside the pack folder is opened: the name is refused first."""
    (tmp_path / "outside.onnx").write_bytes(YUNET.read_bytes())
    m = manifest(copy)
    m["files"][name] = m["files"].pop(YUNET.name)
    m["detector"]["file"] = name
    (copy / MANIFEST).write_text(json.dumps(m))
    code, _, err = run(capsys, "verify", raw("Bob_Hope", 1), raw("Bob_Hope", 2), "--model", copy)
    line = one_error(err)
    assert code == 2 and ("not allowed in a pack" in line or "is not a pack file name" in line), line


BAD_MANIFESTS = {
    "not JSON": (lambda m: "{not json", "not a valid pack manifest"),
    "NaN literal": (
        lambda m: json.dumps(m).replace('"size": 1382', '"size": NaN'),
        "not a valid pack manifest",
    ),
    "newer version": (lambda m: json.dumps({**m, "version": 2}), "written by a newer edgeface"),
    "another format": (lambda m: json.dumps({**m, "format": "zip"}), "not an edgeface pack manifest"),
    "negative size": (
        lambda m: json.dumps(m).replace('"size": 1382', '"size": -1'),
        "must be an integer in",
    ),
    "bad sha": (lambda m: json.dumps(m).replace(m["files"][YUNET.name]["sha256"], "abc"), "64 lowercase hex"),
    "default not listed": (lambda m: json.dumps({**m, "default_artifact": "x.onnx"}), "default_artifact"),
    "artifact not listed in files": (
        lambda m: json.dumps({**m, "artifacts": [{**m["artifacts"][0], "file": "y.onnx"}]}),
        "is not among the manifest's files",
    ),
    "licence of nothing": (
        lambda m: json.dumps({**m, "licenses": [{**m["licenses"][0], "covers": ["z.onnx"]}]}),
        "must cover a list of the pack's artifacts",
    ),
    "huge": (lambda m: json.dumps({**m, "pad": "x" * (1 << 20)}), "larger than 1024 KB"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_malformed_manifest_is_one_error_line(copy, capsys, case) -> None:
    make, message = BAD_MANIFESTS[case]
    (copy / MANIFEST).write_text(make(manifest(copy)))
    code, _, err = run(capsys, "verify", raw("Bob_Hope", 1), raw("Bob_Hope", 2), "--model", copy)
    assert code == 2 and message in one_error(err)


def test_a_linked_manifest_and_non_packs_are_refused(copy, tmp_path, capsys) -> None:
    real = tmp_path / "real.json"
    (copy / MANIFEST).rename(real)
    (copy / MANIFEST).symlink_to(real)
    a = raw("Bob_Hope", 1)
    code, _, err = run(capsys, "verify", a, a, "--model", copy)
    assert code == 2 and "is not a regular file" in one_error(err)
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "empty", "is a folder but not an edgeface pack"),
        (tmp_path / "missing.tar.gz", "pack not found"),
        (tmp_path / "missing_dir", "artifact not found"),
    ]
    for model, message in cases:
        code, _, err = run(capsys, "verify", a, a, "--model", model)
        assert code == 2 and message in one_error(err), (model, err)
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b" + b"junk" * 100)
    (tmp_path / "junk.zip").write_bytes(b"PK junk")
    for junk in ("junk.tar.gz", "junk.zip"):
        code, _, err = run(capsys, "verify", a, a, "--model", tmp_path / junk)
        assert code == 2 and "cannot read pack archive" in one_error(err)


# --- archives ----------------------------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _reg(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _pack_members(packed) -> list[tuple[tarfile.TarInfo, bytes]]:
    p = packed["dir"]
    return [_reg(f.relative_to(p).as_posix(), f.read_bytes()) for f in sorted(p.rglob("*")) if f.is_file()]


EVIL_TARS = {
    "parent traversal": ([_reg("../evil.txt")], "is not allowed in a pack"),
    "absolute path": ([_reg("/tmp/evil.txt")], "is not allowed in a pack"),
    "nested traversal": ([_reg("p/../../evil.txt")], "is not allowed in a pack"),
    "symlink": ([_special("link.onnx", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
    "hard link": ([_special("hard.onnx", tarfile.LNKTYPE, "/etc/passwd")], "is a link"),
    "fifo": ([_special("fifo", tarfile.FIFOTYPE)], "not a regular file"),
    "device": ([_special("dev", tarfile.CHRTYPE)], "not a regular file"),
    "duplicate": ([_reg("a.txt"), _reg("a.txt")], "appears twice"),
    "too deep": ([_reg("a/b/c/d.txt")], "is not allowed in a pack"),
}


@pytest.mark.parametrize("case", list(EVIL_TARS))
def test_archive_members_cannot_escape_or_be_links(packed, tmp_path, capsys, case) -> None:
    members, message = EVIL_TARS[case]
    archive = _tar(tmp_path / "evil.tar.gz", [*_pack_members(packed), *members])
    code, _, err = run(capsys, "verify", raw("Bob_Hope", 1), raw("Bob_Hope", 2), "--model", archive)
    assert code == 2 and message in one_error(err)
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_zip_members_cannot_escape_or_be_links(packed, tmp_path, capsys) -> None:
    for name, attr, message in (
        ("../evil.txt", 0o100644, "is not allowed in a pack"),
        ("link.onnx", 0o120777, "is a link"),
    ):
        archive = tmp_path / "evil.zip"
        shutil.copy(packed["zip"], archive)
        with zipfile.ZipFile(archive, "a") as zf:
            info = zipfile.ZipInfo(name)
            info.external_attr = attr << 16
            zf.writestr(info, "/etc/passwd")
        code, _, err = run(capsys, "verify", raw("Bob_Hope", 1), raw("Bob_Hope", 2), "--model", archive)
        assert code == 2 and message in one_error(err), name


def test_decompression_bombs_and_member_floods_stop_at_the_bounds(
    packed, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(pack_archive, "MAX_EXTRACT_BYTES", 8 << 20)  # the pack itself is ~7.5 MB unpacked
    bomb = tmp_path / "bomb.tar.gz"
    _tar(bomb, [*_pack_members(packed), _reg("zeros.bin", bytes(16 << 20))])
    assert bomb.stat().st_size < packed["tgz"].stat().st_size + 100_000  # 16 MB of zeros compress to KBs
    a = raw("Bob_Hope", 1)
    code, _, err = run(capsys, "verify", a, a, "--model", bomb)
    assert code == 2 and "unpacks to more than 8 MB" in one_error(err)
    zbomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zbomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("p/zeros.bin", bytes(16 << 20))
    code, _, err = run(capsys, "verify", a, a, "--model", zbomb)
    assert code == 2 and "unpacks to more than 8 MB" in one_error(err)
    monkeypatch.setattr(pack_archive, "MAX_MEMBERS", 10)
    flood = _tar(tmp_path / "flood.tar.gz", [_reg(f"f{i}.txt") for i in range(11)])
    code, _, err = run(capsys, "verify", a, a, "--model", flood)
    assert code == 2 and "more than 10 members" in one_error(err)
    # nothing of the refused archives is left in the temporary folder
    import tempfile

    assert not [d for d in Path(tempfile.gettempdir()).glob("edgeface-pack-*") if (d / "zeros.bin").exists()]


def test_archives_made_by_other_tools_and_tampered_archives(packed, tmp_path, capsys) -> None:
    a = raw("Bob_Hope", 1)
    plain = tmp_path / "dot.tgz"  # what `tar czf x.tgz -C pack .` writes: ./ before every name
    _tar(plain, [_special(".", tarfile.DIRTYPE), *[_reg("./" + i.name, d) for i, d in _pack_members(packed)]])
    code, _, err = run(capsys, "verify", a, a, "--model", plain)
    assert code == 0, err
    tampered = tmp_path / "t.tar.gz"
    members = _pack_members(packed)
    members = [(i, d[:-10] if i.name == "mobilefacenet_ms1m_fp32.onnx" else d) for i, d in members]
    _tar(tampered, members)
    code, _, err = run(capsys, "verify", a, a, "--model", tampered)
    assert code == 2 and "truncated or was changed after packing" in one_error(err)


def test_archives_are_reproducible(packed, tmp_path) -> None:
    pack = open_pack(packed["dir"])
    for suffix in ("tar.gz", "zip"):
        one, two = tmp_path / f"a.{suffix}", tmp_path / "b" / f"a.{suffix}"
        two.parent.mkdir(exist_ok=True)
        write_archive(pack, one)
        write_archive(pack, two)
        assert one.read_bytes() == two.read_bytes()
    with tarfile.open(packed["tgz"]) as tar:
        names = tar.getnames()
        assert all(n == "p" or n.startswith("p/") for n in names) and "p/edgeface-pack.json" in names
        assert {m.mtime for m in tar.getmembers()} == {0} and {m.uid for m in tar.getmembers()} == {0}


# --- writing -----------------------------------------------------------------------------------------------
def test_the_writer_refuses_before_writing_anything(packed, tmp_path, capsys) -> None:
    ref = packed["ref"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    junk = busy / "junk.onnx"
    junk.write_bytes(b"not a model" * 100)
    cases = [
        (["-o", busy], "is not empty and is not a pack"),
        (["-o", tmp_path / "n1", "--license", tmp_path / "nope.txt"], "licence file not found"),
        (["-o", tmp_path / "n2", "--detector", LICENSE], "expected a YuNet .onnx file"),
        (["-o", tmp_path / "n3", "--detector", junk], "cannot load face detector"),
        (["-o", tmp_path / "n4", "--archive", tmp_path / "x.rar"], "the name must end in one of"),
        (["-o", tmp_path / "n5", "--default", "other.onnx"], "is not one of the packed artifacts"),
        (["-o", tmp_path / "n6", "--detector", tmp_path / "nope.onnx"], "face detector model not found"),
    ]
    for extra, message in cases:
        detector = [] if "--detector" in extra else ["--detector", YUNET]
        code, _, err = run(capsys, "pack", ref, *extra, *detector)
        assert code == 2 and message in one_error(err), (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"] and sorted(
        p.name for p in busy.iterdir()
    ) == [
        "junk.onnx",
        "notes.txt",
    ]
    code, _, err = run(capsys, "pack", LICENSE, "-o", tmp_path / "n7", "--detector", YUNET)
    assert code == 2 and "not an artifact" in one_error(err)


def test_packing_in_place_adds_to_a_pack_and_carries_licences(packed, tmp_path) -> None:
    """What `edgeface export` does into its output folder: artifacts are hashed where they are, a later
    export adds its own, an artifact changed since it was packed is dropped from the manifest."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a_fp32.onnx", "b_fp32.onnx"):
        shutil.copy(packed["ref"], out / name)
        shutil.copy(str(packed["ref"]) + ".json", out / (name + ".json"))
    warnings: list[str] = []
    lic = [LicenseSource(LICENSE, "beside the weights")]
    p = write_pack(out, [out / "a_fp32.onnx"], YUNET, lic, merge=True, warn=warnings.append)
    assert [a.file for a in p.manifest.artifacts] == ["a_fp32.onnx"] and not warnings
    p = write_pack(out, [out / "b_fp32.onnx"], YUNET, [], merge=True, warn=warnings.append)
    assert [a.file for a in p.manifest.artifacts] == ["a_fp32.onnx", "b_fp32.onnx"]
    assert p.manifest.default_artifact == "b_fp32.onnx"  # the new export's
    assert warnings == ["no licence for b_fp32.onnx: pass --license FILE (the pack records none for it)"]
    covers = {lic.file: lic.covers for lic in p.manifest.licenses}
    assert covers["licenses/LICENSE.mobilefacenet_ms1m"] == ("a_fp32.onnx",)
    open_pack(out).verify()
    _flip_byte(out / "a_fp32.onnx")
    p = write_pack(out, [out / "b_fp32.onnx"], YUNET, [], merge=True, warn=warnings.append)
    assert [a.file for a in p.manifest.artifacts] == ["b_fp32.onnx"]
    assert any("a_fp32.onnx changed since it was packed" in w for w in warnings)
    assert not [f for f in out.iterdir() if f.name.startswith(".")], "staging folder left behind"
    # re-packing a pack elsewhere keeps its licences, detector and their origins
    again = write_pack(tmp_path / "again", [packed["tgz"]], warn=warnings.append)  # the pack's detector
    assert {x.origin for x in again.manifest.licenses} == {
        x.origin for x in open_pack(packed["dir"]).manifest.licenses
    }
    assert len(again.manifest.artifacts) == 2
    again.verify()


def test_a_file_changed_after_it_was_checked_is_checked_again(copy, monkeypatch) -> None:
    """Hashes are remembered per process only under the file's (inode, size, mtime, ctime): a write moves
    the ctime, so the next check hashes it again and fails."""
    from edgeface.runtime import pack as pack_module

    monkeypatch.setattr(pack_module, "RACY_SECONDS", -1e9)  # remember even just-written files
    p = open_pack(copy)
    p.verify()
    p.verify()  # from memory
    _flip_byte(copy / YUNET.name)
    with pytest.raises(Exception, match="does not match its SHA-256"):
        p.verify()
