"""Bad galleries and identity names, through `enroll`, `identify`, `gallery list` and `gallery remove`.

A damaged gallery is an error that says so, never a guess (a NaN template used to hide its identity from
every search); a name is normalised in one place (runtime.gallery.clean_name / check_new_name); the gallery
file's bytes never change on a refused command; and reading needs no write access (mode=ro, immutable on a
read-only mount).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edgeface.runtime.gallery import Gallery, ModelTag

from edgeface.errors import EdgefaceError
from tests.test_bad_input_support import (
    FACE,
    artifact,
    assert_one_error,
    can_mount,
    in_mount,
    make_gallery,
    run,
    snapshot,
    tamper,
)

BAD_NAMES = {
    "non-utf8": (os.fsdecode(b"Bob \xff"), "not valid UTF-8"),
    "newline-forging-a-line": ("Bob\n  Mallory                        9 template(s)", "control characters"),
    "carriage-return": ("Bob\rMallory", "control characters"),
    "terminal-escape": ("Bob\x1b[2J", "control characters"),
    "bidi-override": ("Bob\u202eyrollaM", "control characters"),
    "empty": ("", "must not be empty"),
    "only-spaces": ("   ", "must not be empty"),
    "too-long": ("x" * 300, "limit is 256"),
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_bad_identity_name_is_refused_at_enroll(case: str, capsys, tmp_path: Path) -> None:
    name, fragment = BAD_NAMES[case]
    gallery = make_gallery(tmp_path / "g.sqlite")
    before = snapshot(gallery)
    r = run(capsys, "enroll", "--name", name, FACE, "--model", artifact(), "--gallery", gallery)
    assert_one_error(r, fragment)
    assert snapshot(gallery) == before


def test_names_are_normalised_in_one_place(capsys, tmp_path: Path) -> None:
    gallery = tmp_path / "g.sqlite"
    r = run(capsys, "enroll", "--name", "  Bob Hope  ", FACE, "--model", artifact(), "--gallery", gallery)
    assert r.code == 0 and "for 'Bob Hope'" in r.out, r.err
    r = run(capsys, "gallery", "remove", "  Bob Hope  ", "--gallery", gallery)  # refused before the fix
    assert r.code == 0 and "removed 'Bob Hope' (1 template(s))" in r.out, r.err
    before = snapshot(gallery)
    r = run(capsys, "gallery", "remove", os.fsdecode(b"Bob \xff"), "--gallery", gallery)
    assert_one_error(r, "not valid UTF-8")
    assert snapshot(gallery) == before


def test_control_characters_already_stored_are_escaped_on_output(capsys, tmp_path: Path) -> None:
    """A gallery written by another tool (or an older edgeface) may hold such a name: every line printed
    is still one line per identity."""
    gallery = make_gallery(tmp_path / "g.sqlite", names=("alice",))
    forged = "eve\n  root                           99 template(s)"
    tamper(gallery, "UPDATE identities SET name = ?", params=(forged,))
    r = run(capsys, "gallery", "list", "--gallery", gallery)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("  eve\\n  root"), r.out
    r = run(capsys, "identify", FACE, "--model", artifact(), "--gallery", gallery, "--threshold", "-1")
    assert r.code == 0 and r.out.splitlines()[0].startswith("eve\\n  root"), r.out
    assert len(r.out.splitlines()) == 2


def _dim(value: str) -> Callable[[Path], None]:
    return lambda g: tamper(g, "UPDATE meta SET value = ? WHERE key = 'embedding_dim'", params=(value,))


def _template(vector: np.ndarray) -> Callable[[Path], None]:
    blob = np.asarray(vector, "<f4").tobytes()
    return lambda g: tamper(g, "UPDATE templates SET embedding = ? WHERE id = 1", params=(blob,))


def _nan_vector() -> np.ndarray:
    v = np.full(128, 1 / np.sqrt(128))
    v[3] = np.nan
    return v


# id -> (damage, fragment of the error line); each is read by `gallery list` or `identify`
CORRUPT: dict[str, tuple[Callable[[Path], None], str]] = {
    "embedding_dim-not-an-integer": (_dim("abc"), "embedding_dim 'abc'"),
    "embedding_dim-negative": (_dim("-128"), "embedding_dim '-128'"),
    "embedding_dim-absurd": (_dim("999999999999"), "embedding_dim"),
    "meta-row-missing": (
        lambda g: tamper(g, "DELETE FROM meta WHERE key = 'model_name'"),
        "lacks model_name",
    ),
    "schema-row-missing": (
        lambda g: tamper(g, "DELETE FROM meta WHERE key = 'schema_version'"),
        "no schema_version",
    ),
    "sha256-mangled": (
        lambda g: tamper(g, "UPDATE meta SET value = 'zz' WHERE key = 'model_sha256'"),
        "not a SHA-256",
    ),
    "templates-of-a-deleted-identity": (
        lambda g: tamper(g, "DELETE FROM identities WHERE name = 'alice'"),
        "belong to no identity",
    ),
    "nan-template": (_template(_nan_vector()), "not finite unit vectors (identities: alice)"),
    "inf-template": (_template(np.full(128, np.inf)), "not finite unit vectors"),
    "template-not-unit": (_template(np.full(128, 3.0)), "not finite unit vectors"),
    "template-wrong-size": (_template(np.ones(7)), "template sizes do not match 128-d"),
    "template-as-text": (
        lambda g: tamper(g, "UPDATE templates SET embedding = 'hello' WHERE id = 1"),
        "template sizes",
    ),
    "name-as-blob": (
        lambda g: tamper(g, "UPDATE identities SET name = x'ff00' WHERE name = 'bob'"),
        "not text",
    ),
    "name-invalid-utf8-text": (
        lambda g: tamper(g, "UPDATE identities SET name = CAST(x'ff' AS TEXT) WHERE name = 'bob'"),
        "decode",
    ),
    "templates-table-dropped": (
        lambda g: tamper(g, "DROP TABLE templates"),
        "table(s) ['templates'] missing",
    ),
    "trigger-planted": (
        lambda g: tamper(
            g, "CREATE TRIGGER wipe AFTER INSERT ON templates BEGIN DELETE FROM identities; END"
        ),
        "contains a trigger (wipe)",
    ),
    "view-planted": (lambda g: tamper(g, "CREATE VIEW v AS SELECT 1"), "contains a view (v)"),
    "model-unbound-with-templates": (
        lambda g: tamper(g, "DELETE FROM meta WHERE key != 'schema_version'"),
        "templates but no model recorded",
    ),
}


# Damage enroll must refuse too (it reads the metadata, not every template: a damaged template is reported
# by the next search, which is the operation it would falsify).
REFUSED_BY_ENROLL = {
    "embedding_dim-not-an-integer",
    "embedding_dim-negative",
    "embedding_dim-absurd",
    "meta-row-missing",
    "schema-row-missing",
    "sha256-mangled",
    "templates-table-dropped",
    "model-unbound-with-templates",
    "trigger-planted",
    "view-planted",
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_gallery_is_an_error_not_a_guess(case: str, capsys, tmp_path: Path) -> None:
    damage, fragment = CORRUPT[case]
    gallery = make_gallery(tmp_path / "g.sqlite")
    damage(gallery)
    before = snapshot(tmp_path)
    r = run(capsys, "identify", FACE, "--model", artifact(), "--gallery", gallery)
    assert_one_error(r, fragment)
    if case in REFUSED_BY_ENROLL:
        r = run(capsys, "enroll", "--name", "carol", FACE, "--model", artifact(), "--gallery", gallery)
        assert_one_error(r, fragment)
    r = run(capsys, "gallery", "list", "--gallery", gallery)
    assert r.code in (0, 2) and "Traceback" not in r.err and "internal failure" not in r.err, r.err
    assert snapshot(tmp_path) == before


def test_nan_embeddings_are_never_stored_or_searched(tmp_path: Path) -> None:
    tag = ModelTag("m", "fp32", 4, "a" * 64)
    with Gallery(tmp_path / "g.sqlite") as g:
        g.enroll("alice", [np.ones(4)], tag)
    before = snapshot(tmp_path / "g.sqlite")
    with Gallery(tmp_path / "g.sqlite") as g:
        for bad in ([np.nan, 1, 1, 1], [np.inf, 0, 0, 0], [0, 0, 0, 0]):
            with pytest.raises(EdgefaceError, match="NaN or infinite|all zeros"):
                g.enroll("bob", [np.ones(4), np.asarray(bad, float)], tag)  # the good one is rolled back
            with pytest.raises(EdgefaceError, match="NaN or infinite|all zeros"):
                g.identify(np.asarray(bad, float), tag)
        assert [r.name for r in g.identities()] == ["alice"]
    assert snapshot(tmp_path / "g.sqlite") == before


PATHS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "parent-is-a-file": (lambda d: _file(d / "x") / "g.sqlite", "a parent of the path is a file"),
    "grandparent-is-a-file": (
        lambda d: _file(d / "x") / "sub" / "g.sqlite",
        "a parent of the path is a file",
    ),
    "path-is-a-folder": (lambda d: _folder(d / "g.sqlite"), "is a directory"),
    "virtual-proc": (
        lambda d: Path("/proc/edgeface-gallery.sqlite"),
        "gallery /proc/edgeface-gallery.sqlite",
    ),
    "virtual-proc-subfolder": (lambda d: Path("/proc/edgeface/g.sqlite"), "/proc/edgeface/g.sqlite"),
    "device": (lambda d: Path("/dev/full"), "/dev/full"),
}


def _file(p: Path) -> Path:
    p.write_text("not a folder")
    return p


def _folder(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.mark.parametrize("case", list(PATHS))
def test_unusable_gallery_path(case: str, capsys, tmp_path: Path) -> None:
    make, fragment = PATHS[case]
    gallery = make(tmp_path)
    before = snapshot(tmp_path)
    r = run(capsys, "enroll", "--name", "carol", FACE, "--model", artifact(), "--gallery", gallery)
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


def test_non_utf8_gallery_path_is_valid_input(capsys, tmp_path: Path) -> None:
    gallery = Path(os.fsdecode(bytes(tmp_path) + b"/gal\xe9ry.sqlite"))
    r = run(capsys, "enroll", "--name", "Bob Hope", FACE, "--model", artifact(), "--gallery", gallery)
    assert r.code == 0 and "gal\\xe9ry.sqlite" in r.out, r.err
    r = run(capsys, "gallery", "list", "--gallery", gallery, "--json")
    assert r.code == 0 and '"Bob Hope"' in r.out, r.err


def test_reads_change_nothing(capsys, tmp_path: Path) -> None:
    gallery = make_gallery(tmp_path / "g.sqlite")
    before = snapshot(tmp_path)
    assert run(capsys, "gallery", "list", "--gallery", gallery).code == 0
    assert run(capsys, "identify", FACE, "--model", artifact(), "--gallery", gallery).code == 0
    assert snapshot(tmp_path) == before


def test_model_mismatch_names_both_models(capsys, tmp_path: Path) -> None:
    from tests.test_bad_input_support import artifact_copy

    gallery = make_gallery(tmp_path / "g.sqlite")
    other = artifact_copy(tmp_path / "other", lambda s: {**s, "precision": "w8a8"})
    other.rename(other.with_name("renamed_w8a8.onnx"))
    Path(str(other) + ".json").rename(other.with_name("renamed_w8a8.onnx.json"))
    before = snapshot(gallery)
    r = run(
        capsys,
        "enroll",
        "--name",
        "c",
        FACE,
        "--model",
        other.with_name("renamed_w8a8.onnx"),
        "--gallery",
        gallery,
    )
    assert_one_error(r, "was made by model mobilefacenet (fp32, onnx, 128-d")
    line = r.errors()[0]
    assert f"file {artifact().name})" in line and "not mobilefacenet (w8a8, onnx, 128-d" in line
    assert "file renamed_w8a8.onnx)" in line
    assert snapshot(gallery) == before


def test_model_binding_is_checked_inside_the_write_transaction(tmp_path: Path) -> None:
    """Writer A's first enroll binds the gallery; writer B checked before A committed (it saw no model)
    and then waits for the lock. Before the fix, B's templates of another model went in."""
    path = tmp_path / "g.sqlite"
    a = ModelTag("m", "fp32", 4, "a" * 64, "a.onnx", "onnx")
    b = ModelTag("m", "w8a8", 4, "b" * 64, "b.tflite", "tflite")
    Gallery(path).close()
    inside = threading.Event()

    def slow() -> object:
        yield np.ones(4)
        inside.set()
        time.sleep(0.5)  # A's transaction stays open while B arrives

    def writer_a() -> None:
        with Gallery(path) as g:
            g.enroll("alice", slow(), a)

    t = threading.Thread(target=writer_a)
    t.start()
    assert inside.wait(10)
    with Gallery(path, timeout=10) as g:
        assert g.model() is None  # A has not committed: the early check passes
        with pytest.raises(EdgefaceError, match="was made by model m \\(fp32"):
            g.enroll("bob", [np.ones(4)], b)
    t.join()
    with Gallery(path) as g:
        assert [r.name for r in g.identities()] == ["alice"] and g.model() == a


def test_read_only_gallery(capsys, tmp_path: Path) -> None:
    """identify and list read a gallery on a read-only file system (WAL needs a -shm file it cannot create
    there: opened immutable); enroll and remove say the folder is read-only."""
    gallery = make_gallery(tmp_path / "g.sqlite")
    if can_mount():
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        setup = f"cp {gallery} {mnt}/g.sqlite"

        def cli(*argv: str) -> object:
            return in_mount(mnt, setup, *argv, ro=True)

        target = mnt / "g.sqlite"
    elif os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        target = ro / "g.sqlite"
        target.write_bytes(gallery.read_bytes())
        ro.chmod(0o555)

        def cli(*argv: str) -> object:
            return run(capsys, *argv)

    else:
        pytest.skip("root without mount namespaces: no way to make a read-only folder here")
    r = cli("gallery", "list", "--gallery", target)
    assert r.code == 0 and "2 identities" in r.out, r.err  # type: ignore[attr-defined]
    r = cli("identify", FACE, "--model", artifact(), "--gallery", target, "--json")
    assert r.code == 0 and '"candidates"' in r.out, r.err  # type: ignore[attr-defined]
    r = cli("gallery", "remove", "alice", "--gallery", target)
    assert_one_error(r, "folder is read-only")  # type: ignore[arg-type]
    r = cli("enroll", "--name", "c", FACE, "--model", artifact(), "--gallery", target)
    assert_one_error(r, "folder is read-only")  # type: ignore[arg-type]
