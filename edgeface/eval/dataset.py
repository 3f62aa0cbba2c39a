"""A user's own faces as an identity-folder dataset, and the pairs evaluated on it.

Layout: DIR/<identity>/<image> (any depth below the identity folder; the identity is the first folder
under DIR). Every pair of images of one identity is a genuine pair. Impostor pairs (images of different
identities) grow quadratically, so above `max_impostors` they are sampled: uniformly, without
replacement, from a seeded generator, so the same data, count and seed give the same pairs on every
machine and for every model compared. The pairs are drawn over all images *before* any face is detected,
so models that fail on different images are still measured on the same pair list.

numpy only (no torch): artifacts are evaluated on a device-like install.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeface.data.folders import IMAGE_SUFFIXES
from edgeface.errors import EdgefaceError
from edgeface.io import os_errors, printable

DEFAULT_IMPOSTORS = 200_000  # enough to resolve FMR 1e-4 with 20 false matches allowed
MAX_IMPOSTORS = 50_000_000  # index arrays of 400 MB: the most a laptop should be asked for


@dataclass(frozen=True)
class IdentityFolders:
    root: Path
    images: list[Path]  # sorted by (identity, path)
    identity: np.ndarray  # (N,) index into `names` for each image
    names: list[str]  # identity folder names, sorted
    loose: list[Path]  # images directly in root: no identity, listed and not used

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.identity, minlength=len(self.names))


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def read_identity_folders(root: str | os.PathLike[str], need_impostors: bool = True) -> IdentityFolders:
    """Scan DIR/<identity>/...; an error (before any model loads) if the layout cannot give pairs."""
    root = Path(root)
    shown = printable(root)
    with os_errors("read", root):
        if not root.exists():
            raise EdgefaceError(f"data folder not found: {shown}")
        if not root.is_dir():
            raise EdgefaceError(f"not a folder: {shown}")
        if (root / "pairs.txt").is_file() and (root / "aligned112").is_dir():
            raise EdgefaceError(
                f"{shown} is an LFW root: use --pairs {shown}/pairs.txt --images {shown}/aligned112 for the "
                f"LFW protocol, or --data {shown}/aligned112 for all its identities"
            )
        loose = sorted(p for p in root.iterdir() if _is_image(p))
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        images: list[Path] = []
        ids: list[int] = []
        names: list[str] = []
        for d in folders:
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            if found:
                ids += [len(names)] * len(found)
                names.append(d.name)
                images += found
    if not images:
        hint = (
            f" ({len(loose)} images lie directly in it: put each person's images in a folder of their own)"
            if loose
            else ""
        )
        raise EdgefaceError(
            f"no identity folders with images ({', '.join(IMAGE_SUFFIXES)}) in {shown}: expected "
            f"{shown}/<identity>/<image>{hint}"
        )
    if need_impostors and len(names) < 2:
        raise EdgefaceError(f"{shown} holds one identity ({printable(names[0])}): impostor pairs need two")
    return IdentityFolders(root, images, np.asarray(ids, np.int64), names, loose)


def from_paths(root: Path, paths: list[Path]) -> IdentityFolders:
    """A dataset from a list of images whose parent folder is their identity (e.g. a data split)."""
    names = sorted({p.parent.name for p in paths})
    index = {n: i for i, n in enumerate(names)}
    ordered = sorted(paths, key=lambda p: (index[p.parent.name], p))
    ids = np.asarray([index[p.parent.name] for p in ordered], np.int64)
    return IdentityFolders(Path(root), ordered, ids, names, [])


@dataclass(frozen=True)
class Pairs:
    """Image index pairs (left < right)."""

    genuine: np.ndarray  # (g, 2)
    impostor: np.ndarray  # (m, 2)
    impostor_possible: int  # every different-identity pair of the dataset
    sampled: bool  # False: `impostor` is all of them
    seed: int


def genuine_pairs(identity: np.ndarray) -> np.ndarray:
    """Every pair of images of the same identity, (g, 2) sorted."""
    ident = np.asarray(identity)
    out = []
    for k in np.unique(ident):
        members = np.flatnonzero(ident == k)
        if members.size >= 2:
            a, b = np.triu_indices(members.size, 1)
            out.append(np.stack([members[a], members[b]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def impostor_count(identity: np.ndarray) -> int:
    counts = np.bincount(np.asarray(identity)).astype(np.int64)
    n = int(counts.sum())
    return int((n * n - int((counts * counts).sum())) // 2)


def make_pairs(identity: np.ndarray, max_impostors: int = DEFAULT_IMPOSTORS, seed: int = 0) -> Pairs:
    """All genuine pairs; all impostor pairs when there are at most `max_impostors`, else that many drawn
    uniformly without replacement (seeded)."""
    if not 1 <= max_impostors <= MAX_IMPOSTORS:
        raise EdgefaceError(f"impostor pairs must be between 1 and {MAX_IMPOSTORS:,}, got {max_impostors}")
    ident = np.asarray(identity, np.int64)
    possible = impostor_count(ident)
    genuine = genuine_pairs(ident)
    if possible <= max_impostors:
        return Pairs(genuine, _all_impostors(ident), possible, False, seed)
    return Pairs(genuine, _sample_impostors(ident, max_impostors, seed), possible, True, seed)


def _all_impostors(ident: np.ndarray) -> np.ndarray:
    n = ident.size
    rows = []
    for i in range(n - 1):  # row by row: memory grows with the pairs kept, not with n^2 temporaries
        j = np.arange(i + 1, n)
        j = j[ident[j] != ident[i]]
        if j.size:
            rows.append(np.stack([np.full(j.size, i), j], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)


def _sample_impostors(ident: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` distinct different-identity pairs, uniformly: candidates (i, j) are drawn uniformly over
    ordered index pairs, those of one identity rejected, and each unordered pair kept at its first draw."""
    n = ident.size
    rng = np.random.default_rng(seed)
    keys = np.zeros(0, np.int64)
    while keys.size < count:
        need = count - keys.size
        i = rng.integers(0, n, 2 * need + 1024)
        j = rng.integers(0, n, 2 * need + 1024)
        ok = ident[i] != ident[j]
        lo, hi = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
        keys = np.concatenate([keys, lo * n + hi])
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]  # distinct, in the order drawn: reproducible whatever the batch size
    keys = np.sort(keys[:count])
    return np.stack([keys // n, keys % n], axis=1)
