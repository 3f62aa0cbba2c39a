"""LFW: the View 2 pairs protocol and the project's split convention, in one place.

Test = pairs folds 6-10; compression data (calibration, QAT, distillation, pruning fine-tune) = every image
of an identity that appears nowhere in folds 6-10. Everything else in edgeface asks this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeface.errors import EdgefaceError

TEST_FOLDS = (6, 7, 8, 9, 10)
MAX_FOLDS = 10_000  # fold numbers are checked against this (and the file) before a range is expanded


@dataclass(frozen=True)
class Pair:
    left: str  # image path relative to the aligned folder, e.g. "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    right: str
    same: bool
    fold: int  # 1-based

    @property
    def identities(self) -> tuple[str, str]:
        return self.left.split("/")[0], self.right.split("/")[0]


def _image(name: str, index: str, where: str) -> str:
    try:
        i = int(index)
    except ValueError:
        raise EdgefaceError(f"{where}: image number '{index}' is not an integer") from None
    return f"{name}/{name}_{i:04d}.jpg"


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Parse a pairs file: header 'folds n' then folds of n same and n different pairs."""
    from edgeface.io import os_errors

    path = Path(path)
    if not path.is_file():
        raise EdgefaceError(f"pairs file not found: {path}")
    with os_errors("read", path):
        raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgefaceError(
            f"{path}: not a text pairs file (byte {e.start} is not UTF-8); expected LFW pairs.txt"
        ) from None
    if "\x00" in text:
        raise EdgefaceError(f"{path}: not a text pairs file (it contains NUL bytes); expected LFW pairs.txt")
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise EdgefaceError(f"{path}: empty pairs file")
    head = lines[0]
    try:
        n_folds, per_fold = (int(head[0]), int(head[1])) if len(head) == 2 else (1, 0)
        if len(head) == 2 and (n_folds < 1 or per_fold < 1 or n_folds > MAX_FOLDS):
            raise ValueError
    except ValueError:
        raise EdgefaceError(
            f"{path}:1: header must be '<folds> <pairs per half-fold>' (1-{MAX_FOLDS} folds, at least "
            f"1 pair), got {' '.join(head)[:80]!r}"
        ) from None
    body = lines[1:] if len(head) == 2 else lines
    pairs: list[Pair] = []
    for n, parts in enumerate(body, start=2 if len(head) == 2 else 1):
        where = f"{path}:{n}"
        fold = (len(pairs) // (2 * per_fold)) + 1 if per_fold else 1
        if len(parts) == 3:
            pairs.append(
                Pair(_image(parts[0], parts[1], where), _image(parts[0], parts[2], where), True, fold)
            )
        elif len(parts) == 4:
            pairs.append(
                Pair(_image(parts[0], parts[1], where), _image(parts[2], parts[3], where), False, fold)
            )
        else:
            raise EdgefaceError(f"{where}: expected 'name i j' or 'name1 i name2 j', got {' '.join(parts)!r}")
    if per_fold and len(pairs) != n_folds * 2 * per_fold:
        raise EdgefaceError(
            f"{path}: header promises {n_folds} folds x {2 * per_fold} pairs, found {len(pairs)} pairs"
        )
    return pairs


def parse_folds(text: str, available: int = MAX_FOLDS) -> tuple[int, ...]:
    """'6-10' or '1,3,5' or '6-8,10' -> sorted fold numbers, each in 1..`available` (the pairs file's
    fold count when known). Bounds are checked before a range is expanded: '1-2000000000' is refused,
    not allocated."""
    spans: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            a, sep, b = part.partition("-")
            lo = int(a)
            hi = int(b) if sep else lo
            if lo > hi:
                raise ValueError
            spans.append((lo, hi))
    except ValueError:
        raise EdgefaceError(f"--folds: cannot read '{text[:80]}' (use e.g. 6-10 or 1,3,5)") from None
    if not spans or min(lo for lo, _ in spans) < 1:
        raise EdgefaceError(f"--folds: fold numbers start at 1, got '{text[:80]}'")
    top = max(hi for _, hi in spans)
    if top > available:
        if available == MAX_FOLDS:
            raise EdgefaceError(f"--folds: fold {top} is past the limit of {MAX_FOLDS} folds")
        raise EdgefaceError(f"--folds: fold {top} is not in the pairs file (it has 1-{available})")
    return tuple(sorted({f for lo, hi in spans for f in range(lo, hi + 1)}))


def select_folds(pairs: list[Pair], folds: tuple[int, ...]) -> list[Pair]:
    available = {p.fold for p in pairs}
    missing = sorted(set(folds) - available)
    if missing:
        raise EdgefaceError(
            f"--folds: fold(s) {missing} not in the pairs file (it has {min(available)}-{max(available)})"
        )
    return [p for p in pairs if p.fold in folds]


def is_lfw_root(root: Path) -> bool:
    return (root / "pairs.txt").is_file() and (root / "aligned112").is_dir()


def test_identities(pairs: list[Pair], folds: tuple[int, ...] = TEST_FOLDS) -> set[str]:
    return {name for p in pairs if p.fold in folds for name in p.identities}


def compression_split(root: str | os.PathLike[str], folds: tuple[int, ...] = TEST_FOLDS) -> list[Path]:
    """Every aligned image of an identity absent from the test folds (6,922 images for LFW)."""
    root = Path(root)
    banned = test_identities(read_pairs(root / "pairs.txt"), folds)
    aligned = root / "aligned112"
    images = sorted(
        p for d in aligned.iterdir() if d.is_dir() and d.name not in banned for p in d.glob("*.jpg")
    )
    if not images:
        raise EdgefaceError(f"{root}: no images outside the test folds")
    return images
