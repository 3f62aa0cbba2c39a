"""The 1:N gallery: identities and their templates in SQLite, searched as one numpy matrix.

SQLite because it is in every Python, survives power loss (WAL + one transaction per write, so a crash
mid-enroll rolls back to the last commit and loses nothing already stored), and is one file to copy off a
Pi. Templates are L2-normalised float32 BLOBs; search loads them once into an (N, D) matrix and does one
matrix-vector product, which is fast enough at 100k templates that no index structure is needed.

A gallery records which model made its templates (name, precision, embedding size and a SHA-256 of the
artifact) and refuses any other: embeddings of different models live in unrelated spaces, and mixing them
gives confident wrong answers rather than errors.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgeface.runtime.preprocess import l2_normalize

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec

SCHEMA_VERSION = "1"
GALLERY_ENV = "EDGEFACE_GALLERY"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL, source TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS templates_identity ON templates(identity_id);
"""


def default_gallery_path() -> Path:
    env = os.environ.get(GALLERY_ENV)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgeface" / "gallery.sqlite"


@dataclass(frozen=True)
class ModelTag:
    """What made a gallery's templates; two tags must be equal for templates to be comparable."""

    name: str
    precision: str
    embedding_dim: int
    sha256: str

    @classmethod
    def of(cls, spec: ModelSpec, artifact_path: str | os.PathLike[str]) -> ModelTag:
        digest = hashlib.sha256()
        with open(artifact_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return cls(spec.name, spec.precision, int(spec.embedding_dim), digest.hexdigest())

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.embedding_dim}-d, sha256 {self.sha256[:12]})"


@dataclass(frozen=True)
class Match:
    name: str
    score: float
    templates: int


@dataclass(frozen=True)
class IdentityRow:
    name: str
    templates: int
    created: float


class Gallery:
    """Open (or create) a gallery file. Use as a context manager; every write is one transaction."""

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 5.0, create: bool = True):
        self.path = Path(path) if path else default_gallery_path()
        if not self.path.exists() and not create:
            raise EdgefaceError(f"gallery not found: {self.path}")
        if self.path.exists() and not self.path.is_file():
            raise EdgefaceError(f"gallery path is not a file: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._matrix: SearchIndex | None = None
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise EdgefaceError(f"cannot open gallery {self.path}: {e}") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        with self._errors():
            self._db.execute("PRAGMA foreign_keys = ON")
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise EdgefaceError(f"{self.path} is an SQLite file but not an edgeface gallery")
            if not tables:
                self._db.execute("PRAGMA journal_mode = WAL")
                with self._transaction():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._db.execute(statement)  # not executescript: it would COMMIT our transaction
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                    )
            version = self._meta().get("schema_version")
            if version != SCHEMA_VERSION:
                raise EdgefaceError(f"{self.path}: gallery schema {version!r} is not supported")

    # --- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's exceptions -> one clear line naming the gallery file and what to do."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise EdgefaceError(
                    f"gallery {self.path} is locked by another process; retry when it finishes"
                ) from None
            raise EdgefaceError(f"gallery {self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise EdgefaceError(f"gallery {self.path} is corrupt or not a database ({e})") from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a concurrent writer fails fast instead of midway.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._matrix = None

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    # --- model binding ---------------------------------------------------------------------------------
    def model(self) -> ModelTag | None:
        with self._errors():
            m = self._meta()
        if "model_sha256" not in m:
            return None
        return ModelTag(m["model_name"], m["model_precision"], int(m["embedding_dim"]), m["model_sha256"])

    def check_model(self, tag: ModelTag) -> None:
        have = self.model()
        if have is not None and have != tag:
            raise EdgefaceError(
                f"gallery {self.path} was made by model {have.describe()}, not {tag.describe()}; "
                "use that model, or a new gallery (--gallery PATH)"
            )

    # --- writes ----------------------------------------------------------------------------------------
    def enroll(
        self, name: str, embeddings: Iterable[np.ndarray], tag: ModelTag, sources: Iterable[str] | None = None
    ) -> int:
        """Add templates for `name` (created if new) in ONE transaction; returns how many were added."""
        return self.enroll_many([(name, embeddings, sources)], tag)

    def enroll_many(
        self, items: Iterable[tuple[str, Iterable[np.ndarray], Iterable[str] | None]], tag: ModelTag
    ) -> int:
        """Several identities in ONE transaction (bulk import): all are stored, or none."""
        added = 0
        with self._errors():
            self.check_model(tag)
            with self._transaction():
                if self.model() is None:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [
                            ("model_name", tag.name),
                            ("model_precision", tag.precision),
                            ("embedding_dim", str(tag.embedding_dim)),
                            ("model_sha256", tag.sha256),
                        ],
                    )
                for name, embeddings, sources in items:
                    added += self._add(name, embeddings, sources, tag)
        return added

    def _add(
        self, name: str, embeddings: Iterable[np.ndarray], sources: Iterable[str] | None, tag: ModelTag
    ) -> int:
        name = name.strip()
        if not name:
            raise EdgefaceError("identity name must not be empty")
        now = time.time()
        self._db.execute("INSERT OR IGNORE INTO identities (name, created) VALUES (?, ?)", (name, now))
        (ident,) = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        src = iter(sources) if sources is not None else None
        added = 0
        for e in embeddings:
            v = l2_normalize(np.ravel(e)).astype("<f4")
            if v.size != tag.embedding_dim:
                raise EdgefaceError(
                    f"embedding of size {v.size}, the gallery's model gives {tag.embedding_dim}"
                )
            source = next(src, None) if src is not None else None
            self._db.execute(
                "INSERT INTO templates (identity_id, embedding, source, created) VALUES (?, ?, ?, ?)",
                (ident, v.tobytes(), source, now),
            )
            added += 1
        if added == 0:
            raise EdgefaceError(f"no templates to enroll for '{name}'")
        return added

    def remove(self, name: str) -> int:
        """Delete an identity and all its templates; returns the number of templates removed."""
        with self._errors(), self._transaction():
            row = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise EdgefaceError(f"no identity named '{name}' in gallery {self.path}")
            (n,) = self._db.execute("SELECT COUNT(*) FROM templates WHERE identity_id = ?", row).fetchone()
            self._db.execute("DELETE FROM identities WHERE id = ?", row)
        return int(n)

    # --- reads -----------------------------------------------------------------------------------------
    def identities(self) -> list[IdentityRow]:
        with self._errors():
            rows = self._db.execute(
                "SELECT i.name, COUNT(t.id), i.created FROM identities i "
                "LEFT JOIN templates t ON t.identity_id = i.id GROUP BY i.id ORDER BY i.name"
            ).fetchall()
        return [IdentityRow(n, int(c), float(t)) for n, c, t in rows]

    def __len__(self) -> int:
        with self._errors():
            return int(self._db.execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    def matrix(self) -> SearchIndex:
        """All templates as one (N, D) float32 matrix plus their owners; cached until the next write."""
        if self._matrix is None:
            with self._errors():
                id_rows = self._db.execute("SELECT id, name FROM identities ORDER BY id").fetchall()
                rows = self._db.execute("SELECT identity_id, embedding FROM templates ORDER BY id").fetchall()
            tag = self.model()
            dim = tag.embedding_dim if tag else 0
            blob = b"".join(r[1] for r in rows)
            if rows and len(blob) != len(rows) * dim * 4:
                raise EdgefaceError(f"gallery {self.path} is corrupt: template sizes do not match {dim}-d")
            mat = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
            index_of = {ident: i for i, (ident, _) in enumerate(id_rows)}
            owner = np.fromiter((index_of[r[0]] for r in rows), dtype=np.int64, count=len(rows))
            self._matrix = SearchIndex(mat, owner, [n for _, n in id_rows])
        return self._matrix

    def identify(self, embedding: np.ndarray, tag: ModelTag, k: int = 5) -> list[Match]:
        """Top-k identities by their best template's cosine similarity to `embedding`."""
        self.check_model(tag)
        index = self.matrix()
        if len(index.matrix) == 0:
            raise EdgefaceError(f"gallery {self.path} is empty; enroll someone first")
        return index.search(embedding, k)


@dataclass
class SearchIndex:
    """Templates (N, D, L2-normalised), the identity index of each row, and identity names."""

    matrix: np.ndarray
    owner: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        self.counts = np.bincount(self.owner, minlength=len(self.names))
        self.present = np.flatnonzero(self.counts)

    def search(self, embedding: np.ndarray, k: int) -> list[Match]:
        """Vectorised: one matrix-vector product, a per-identity max by ufunc.at, then top-k selection."""
        q = np.ravel(embedding)
        if self.matrix.shape[1] != q.size:
            raise EdgefaceError(f"query of size {q.size} against {self.matrix.shape[1]}-d templates")
        scores = self.matrix @ l2_normalize(q)
        best = np.full(len(self.names), -np.inf, np.float32)
        np.maximum.at(best, self.owner, scores)
        cand = best[self.present]
        k = max(0, min(k, len(cand)))
        if k == 0:
            return []
        idx = np.argpartition(-cand, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
        idx = idx[np.argsort(-cand[idx], kind="stable")]
        return [
            Match(self.names[self.present[i]], float(cand[i]), int(self.counts[self.present[i]])) for i in idx
        ]
