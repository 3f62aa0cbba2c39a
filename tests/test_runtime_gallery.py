"""The SQLite gallery: writes, model binding, top-k search, failure modes (lock, corruption, crash)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from edgeface.runtime.gallery import Gallery, ModelTag
from edgeface.runtime.match import top_k, verify

from edgeface.errors import EdgefaceError

TAG = ModelTag("mobilefacenet", "fp32", 16, "a" * 64)
OTHER = ModelTag("mobilefacenet", "w8a8", 16, "b" * 64)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_enroll_list_remove_and_several_templates(tmp_path) -> None:
    v = _vectors(5)
    with Gallery(tmp_path / "g.sqlite") as g:
        assert g.model() is None
        assert g.enroll("alice", v[:2], TAG, sources=["a1.jpg", "a2.jpg"]) == 2
        assert g.enroll("alice", v[2:3], TAG) == 1  # a third template for the same identity
        g.enroll("bob", v[3:], TAG)
        assert [(r.name, r.templates) for r in g.identities()] == [("alice", 3), ("bob", 2)]
        assert g.model() == TAG and len(g) == 5
        assert g.remove("bob") == 2
        with pytest.raises(EdgefaceError, match="no identity named 'bob'"):
            g.remove("bob")
        with pytest.raises(EdgefaceError, match="must not be empty"):
            g.enroll("  ", v[:1], TAG)
        with pytest.raises(EdgefaceError, match="embedding of size 3"):
            g.enroll("carol", [np.ones(3)], TAG)
    with Gallery(tmp_path / "g.sqlite", create=False) as g:  # persisted
        assert [(r.name, r.templates) for r in g.identities()] == [("alice", 3)]


def test_identify_takes_each_identitys_best_template_and_ranks(tmp_path) -> None:
    v = _vectors(60, seed=1)
    with Gallery(tmp_path / "g.sqlite") as g:
        g.enroll_many([(f"p{i}", v[i * 3 : i * 3 + 3], None) for i in range(20)], TAG)
        probe = v[31] + 0.05 * _vectors(1, seed=2)[0]  # near p10's second template
        res = g.identify(probe, TAG, k=3)
        assert res[0].name == "p10" and res[0].templates == 3 and len(res) == 3
        assert res[0].score > res[1].score >= res[2].score
        # brute force: per identity, best cosine over its templates
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        best = (unit @ (probe / np.linalg.norm(probe))).reshape(20, 3).max(1)
        assert [m.name for m in res] == [f"p{i}" for i in np.argsort(-best)[:3]]
        np.testing.assert_allclose([m.score for m in res], np.sort(best)[::-1][:3], rtol=1e-5)
        assert len(g.identify(probe, TAG, k=100)) == 20


def test_top_k_and_verify_decisions() -> None:
    gal = _vectors(1000, seed=3)
    gal /= np.linalg.norm(gal, axis=1, keepdims=True)
    idx, scores = top_k(gal[123], gal, 5)
    assert idx[0] == 123 and scores[0] == pytest.approx(1.0) and np.all(np.diff(scores) <= 0)
    assert verify(gal[0], gal[0] * 3, 0.5).match and not verify(gal[0], -gal[0], 0.5).match
    with pytest.raises(EdgefaceError, match="no verification threshold"):
        verify(gal[0], gal[1], None)


def test_gallery_refuses_another_model(tmp_path) -> None:
    with Gallery(tmp_path / "g.sqlite") as g:
        g.enroll("alice", _vectors(1), TAG)
        with pytest.raises(EdgefaceError, match="was made by model mobilefacenet \\(fp32"):
            g.enroll("bob", _vectors(1), OTHER)
        with pytest.raises(EdgefaceError, match="was made by model"):
            g.identify(_vectors(1)[0], OTHER)
        assert [r.name for r in g.identities()] == ["alice"]


def test_locked_gallery_fails_clearly(tmp_path) -> None:
    path = tmp_path / "g.sqlite"
    with Gallery(path) as g:
        g.enroll("alice", _vectors(1), TAG)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing
    try:
        with Gallery(path, timeout=0.2) as g, pytest.raises(EdgefaceError, match="locked by another process"):
            g.enroll("bob", _vectors(1), TAG)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_corrupt_or_foreign_database_fails_clearly(tmp_path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EdgefaceError, match="corrupt or not a database"):
        Gallery(junk)
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(EdgefaceError, match="not an edgeface gallery"):
        Gallery(foreign)
    with pytest.raises(EdgefaceError, match="gallery not found"):
        Gallery(tmp_path / "missing.sqlite", create=False)
    # a real gallery whose template blob was damaged
    path = tmp_path / "g.sqlite"
    with Gallery(path) as g:
        g.enroll("alice", _vectors(1), TAG)
    db = sqlite3.connect(path)
    db.execute("UPDATE templates SET embedding = X'00'")
    db.commit()
    db.close()
    with Gallery(path) as g, pytest.raises(EdgefaceError, match="corrupt"):
        g.identify(_vectors(1)[0], TAG)


def test_crash_mid_enroll_loses_nothing(tmp_path) -> None:
    """A process killed (os._exit: no cleanup, no rollback) halfway through a multi-image enroll leaves the
    gallery exactly as it was before that enroll."""
    path = tmp_path / "g.sqlite"
    with Gallery(path) as g:
        g.enroll("alice", _vectors(3), TAG)
    script = textwrap.dedent(f"""
        import os, numpy as np
        from edgeface.runtime.gallery import Gallery, ModelTag
        tag = ModelTag("mobilefacenet", "fp32", 16, "a" * 64)
        def templates():
            yield np.ones(16, np.float32)
            yield np.ones(16, np.float32)
            os._exit(9)  # power cut after two rows were written inside the transaction
        g = Gallery({str(path)!r})
        g.enroll("bob", templates(), tag)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    with Gallery(path) as g:
        assert [(x.name, x.templates) for x in g.identities()] == [("alice", 3)]
        assert g._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # noqa: SLF001
        assert g.identify(_vectors(3)[0], TAG)[0].name == "alice"
