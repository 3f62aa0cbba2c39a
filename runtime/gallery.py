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
import unicodedata
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.io import os_errors, printable, sqlite_errors
from edgeface.spec import ModelSpec

SCHEMA_VERSION = "1"
GALLERY_ENV = "EDGEFACE_GALLERY"
MAX_NAME_CHARS = 256
MAX_EMBEDDING_DIM = 65536
NORM_TOLERANCE = 1e-3  # stored templates are unit vectors; one that is not was damaged
_MODEL_KEYS = ("model_name", "model_precision", "embedding_dim", "model_sha256")

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


def clean_name(name: str) -> str:
    """The one normalisation of an identity name, for every lookup and write: surrounding whitespace is
    dropped, and a name that is not valid UTF-8 (a surrogate-escaped byte from the shell) is refused before
    it reaches SQLite."""
    name = name.strip()
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        raise EdgefaceError(f"identity name '{printable(name)}' is not valid UTF-8")
    if not name:
        raise EdgefaceError("identity name must not be empty")
    return name


def check_new_name(name: str) -> str:
    """A name to create: `clean_name`, plus no control characters (a newline would forge lines in
    `gallery list`; bidi overrides make a name read as another) and at most MAX_NAME_CHARS."""
    name = clean_name(name)
    bad = [ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise EdgefaceError(
            f"identity name '{printable(name)}' contains control characters "
            f"({', '.join(sorted({printable(ch) for ch in bad}))}); use printable text"
        )
    if len(name) > MAX_NAME_CHARS:
        raise EdgefaceError(f"identity name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}")
    return name


@dataclass(frozen=True)
class ModelTag:
    """What made a gallery's templates; two tags must be equal for templates to be comparable."""

    name: str
    precision: str
    embedding_dim: int
    sha256: str
    # Which file and format it was, for the messages: not compared (renaming an artifact changes nothing).
    file: str = field(default="", compare=False)
    format: str = field(default="", compare=False)

    @classmethod
    def of(cls, spec: ModelSpec, artifact_path: str | os.PathLike[str]) -> ModelTag:
        digest = hashlib.sha256()
        with os_errors("read", artifact_path), open(artifact_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        path = Path(artifact_path)
        return cls(
            spec.name,
            spec.precision,
            int(spec.embedding_dim),
            digest.hexdigest(),
            printable(path.name),
            path.suffix.lstrip(".").lower(),
        )

    def describe(self) -> str:
        details = [self.precision, self.format, f"{self.embedding_dim}-d", f"sha256 {self.sha256[:12]}"]
        where = f", file {self.file}" if self.file else ""
        return f"{self.name} ({', '.join(d for d in details if d)}{where})"


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

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
        create: bool = True,
        readonly: bool = False,
    ):
        """`readonly` (identify, list, profile) opens with SQLite's mode=ro, so a gallery on a read-only
        mount or in a folder the user cannot write is still readable; nothing can be changed through it."""
        self.path = Path(path) if path else default_gallery_path()
        self.readonly = readonly
        self._shown = printable(self.path)
        with os_errors("open gallery", self.path):
            exists = self.path.exists()
            if exists and not self.path.is_file():
                raise EdgefaceError(f"gallery path is not a file: {self._shown}")
            if not exists and (readonly or not create):
                raise EdgefaceError(f"gallery not found: {self._shown}")
        if not readonly and exists and not os.access(self.path.parent, os.W_OK):
            raise EdgefaceError(
                f"gallery {self._shown} cannot be changed: its folder is read-only (a read-only mount or "
                "no write permission); identify and gallery list can still read it"
            )
        if not exists:
            parent = self.path.parent
            if any(p.exists() and not p.is_dir() for p in (parent, *parent.parents)):
                raise EdgefaceError(f"cannot create gallery {self._shown}: a parent of the path is a file")
            with os_errors("create the folder of gallery", self.path):
                parent.mkdir(parents=True, exist_ok=True)
            if not os.access(parent, os.W_OK):
                raise EdgefaceError(
                    f"cannot create gallery {self._shown}: its folder is read-only (a read-only mount or no "
                    "write permission)"
                )
        self._matrix: SearchIndex | None = None
        self._db = self._connect(timeout)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _connect(self, timeout: float) -> sqlite3.Connection:
        if not self.readonly:
            with self._errors():
                return sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        # URI with the path's bytes percent-encoded: works for any name, '?' and '#' included.
        uri = "file:" + urllib.parse.quote(os.fsencode(self.path.absolute())) + "?mode=ro"
        with self._errors():
            db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return db
            except sqlite3.OperationalError:
                db.close()
                if os.access(self.path.parent, os.W_OK):
                    raise
            # A WAL gallery needs its -shm file, which cannot be created on a read-only mount; there nobody
            # can write either, so the file is immutable and SQLite may read it without locks.
            return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=timeout, isolation_level=None)

    def _open(self) -> None:
        with self._errors():
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA trusted_schema = OFF")  # the file's schema may not call side effects
            # A gallery is data: SQL stored in the file (a trigger on our INSERT, a view shadowing a table)
            # would run inside our transactions, so a file carrying any is refused.
            code = self._db.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
            ).fetchone()
            if code is not None:
                raise EdgefaceError(
                    f"gallery {self._shown} contains a {code[0]} ({printable(code[1])}); an edgeface gallery "
                    "has none, so this file was crafted or made by another program"
                )
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise EdgefaceError(f"{self._shown} is an SQLite file but not an edgeface gallery")
            if not tables:
                if self.readonly:
                    raise EdgefaceError(f"gallery {self._shown} is empty (not initialised); enroll first")
                self._db.execute("PRAGMA journal_mode = WAL")
                with self._transaction():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._db.execute(statement)  # not executescript: it would COMMIT our transaction
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                    )
            missing = {"identities", "templates"} - tables if tables else set()
            if missing:
                raise EdgefaceError(f"gallery {self._shown} is corrupt: table(s) {sorted(missing)} missing")
            version = self._meta().get("schema_version")
            if version is None:
                raise EdgefaceError(f"gallery {self._shown} is corrupt: its meta table has no schema_version")
            if version != SCHEMA_VERSION:
                raise EdgefaceError(f"{self._shown}: gallery schema '{printable(version)}' is not supported")

    # --- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's and the OS's exceptions -> one clear line naming the gallery file (edgeface.io)."""
        with sqlite_errors(f"gallery {printable(self.path)}"):
            yield

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
        return {str(k): v for k, v in self._db.execute("SELECT key, value FROM meta").fetchall()}

    def _corrupt(self, what: str) -> EdgefaceError:
        return EdgefaceError(f"gallery {self._shown} is corrupt: {what}")

    # --- model binding ---------------------------------------------------------------------------------
    def model(self) -> ModelTag | None:
        """The model the gallery is bound to (None before the first enroll); damaged metadata is an error,
        never a guess."""
        with self._errors():
            m = self._meta()
        present = [k for k in _MODEL_KEYS if k in m]
        if not present:
            return None
        if len(present) != len(_MODEL_KEYS):
            missing = ", ".join(k for k in _MODEL_KEYS if k not in m)
            raise self._corrupt(f"its meta table lacks {missing}")
        values = {k: m.get(k) for k in (*_MODEL_KEYS, "model_file", "model_format")}
        if not all(isinstance(v, str) for v in values.values() if v is not None):
            raise self._corrupt("its meta values are not text")
        dim_text = m["embedding_dim"]
        if not dim_text.isascii() or not dim_text.isdigit() or not 1 <= int(dim_text) <= MAX_EMBEDDING_DIM:
            limit = MAX_EMBEDDING_DIM
            raise self._corrupt(f"embedding_dim '{printable(dim_text)}' is not an integer in 1-{limit}")
        sha = m["model_sha256"]
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise self._corrupt(f"model_sha256 '{printable(sha)[:70]}' is not a SHA-256")
        return ModelTag(
            m["model_name"],
            m["model_precision"],
            int(dim_text),
            sha,
            m.get("model_file") or "",
            m.get("model_format") or "",
        )

    def check_model(self, tag: ModelTag) -> None:
        have = self.model()
        if have is not None and have != tag:
            raise EdgefaceError(
                f"gallery {self._shown} was made by model {have.describe()}, not {tag.describe()}; "
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
        if self.readonly:
            raise EdgefaceError(f"gallery {self._shown} was opened read-only")
        with self._errors():
            self.check_model(tag)  # fail fast, before the write lock
            with self._transaction():
                # Again under the write lock: another writer may have bound the gallery to its model
                # between the check above and BEGIN IMMEDIATE.
                self.check_model(tag)
                if self.model() is None:
                    (orphans,) = self._db.execute("SELECT COUNT(*) FROM templates").fetchone()
                    if orphans:
                        raise self._corrupt(f"{orphans} templates but no model recorded in its meta table")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [
                            ("model_name", tag.name),
                            ("model_precision", tag.precision),
                            ("embedding_dim", str(tag.embedding_dim)),
                            ("model_sha256", tag.sha256),
                            ("model_file", tag.file),
                            ("model_format", tag.format),
                        ],
                    )
                for name, embeddings, sources in items:
                    added += self._add(name, embeddings, sources, tag)
        return added

    def _add(
        self, name: str, embeddings: Iterable[np.ndarray], sources: Iterable[str] | None, tag: ModelTag
    ) -> int:
        name = check_new_name(name)
        now = time.time()
        self._db.execute("INSERT OR IGNORE INTO identities (name, created) VALUES (?, ?)", (name, now))
        (ident,) = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        src = iter(sources) if sources is not None else None
        added = 0
        for e in embeddings:
            v = unit_vector(e, "embedding")
            if v.size != tag.embedding_dim:
                raise EdgefaceError(
                    f"embedding of size {v.size}, the gallery's model gives {tag.embedding_dim}"
                )
            source = next(src, None) if src is not None else None
            source = printable(source) if source is not None else None  # no surrogates reach SQLite
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
        name = clean_name(name)  # the same normalisation enroll applied
        if self.readonly:
            raise EdgefaceError(f"gallery {self._shown} was opened read-only")
        with self._errors(), self._transaction():
            row = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise EdgefaceError(f"no identity named '{printable(name)}' in gallery {self._shown}")
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
        if not all(isinstance(n, str) and isinstance(t, int | float) for n, _, t in rows):
            raise self._corrupt("an identity has a name that is not text or no creation time")
        return [IdentityRow(n, int(c), float(t)) for n, c, t in rows]

    def templates_of(self, name: str) -> int:
        """How many templates `name` has (0 if absent), without reading any other identity."""
        with self._errors():
            (n,) = self._db.execute(
                "SELECT COUNT(t.id) FROM identities i JOIN templates t ON t.identity_id = i.id "
                "WHERE i.name = ?",
                (clean_name(name),),
            ).fetchone()
        return int(n)

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
            if rows and tag is None:
                raise self._corrupt(f"{len(rows)} templates but no model recorded in its meta table")
            dim = tag.embedding_dim if tag else 0
            if not all(isinstance(r[1], bytes) and len(r[1]) == dim * 4 for r in rows):
                raise self._corrupt(f"template sizes do not match {dim}-d")
            blob = b"".join(r[1] for r in rows)
            mat = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
            index_of = {ident: i for i, (ident, _) in enumerate(id_rows)}
            orphans = sum(r[0] not in index_of for r in rows)
            if orphans:
                raise self._corrupt(f"{orphans} template(s) belong to no identity (deleted outside edgeface)")
            owner = np.fromiter((index_of[r[0]] for r in rows), dtype=np.int64, count=len(rows))
            names = [n for _, n in id_rows]
            if not all(isinstance(n, str) for n in names):
                raise self._corrupt("an identity name is not text")
            bad = ~np.isfinite(mat).all(axis=1)
            if not bad.any():
                bad = np.abs(np.linalg.norm(mat, axis=1) - 1.0) > NORM_TOLERANCE
            if bad.any():
                who = sorted({printable(names[i]) for i in owner[bad]})
                raise self._corrupt(
                    f"{int(bad.sum())} template(s) are not finite unit vectors (identities: "
                    f"{', '.join(who[:5])}{', ...' if len(who) > 5 else ''}); remove and re-enroll them"
                )
            self._matrix = SearchIndex(mat, owner, names)
        return self._matrix

    def identify(self, embedding: np.ndarray, tag: ModelTag, k: int = 5) -> list[Match]:
        """Top-k identities by their best template's cosine similarity to `embedding`."""
        self.check_model(tag)
        index = self.matrix()
        if len(index.matrix) == 0:
            raise EdgefaceError(f"gallery {self._shown} is empty; enroll someone first")
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
        q = unit_vector(embedding, "query embedding")
        if self.matrix.shape[1] != q.size:
            raise EdgefaceError(f"query of size {q.size} against {self.matrix.shape[1]}-d templates")
        scores = self.matrix @ q
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


def unit_vector(e: np.ndarray, what: str) -> np.ndarray:
    """An embedding as a float32 unit vector; NaN, Inf or an all-zero vector is refused, because it
    compares as "no match" with everyone (a NaN template hides its identity) or as noise."""
    v = np.ravel(np.asarray(e, dtype=np.float64))
    norm = float(np.linalg.norm(v)) if v.size else 0.0
    if not np.isfinite(v).all() or not np.isfinite(norm):
        raise EdgefaceError(f"{what} contains NaN or infinite values; the model or its spec is broken")
    if norm < 1e-12:
        raise EdgefaceError(f"{what} is all zeros; the model or its spec is broken")
    return (v / norm).astype("<f4")
