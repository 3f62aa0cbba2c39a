"""The LFW pairs protocol and the split convention, checked on the real ../shared/data/lfw."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeface.data import lfw as lfw_data  # module import: pytest would collect a bare test_identities
from edgeface.data.lfw import TEST_FOLDS, compression_split, parse_folds, read_pairs, select_folds
from edgeface.errors import EdgefaceError
from edgeface.eval import lfw_eval


def test_read_pairs_view2(lfw: Path) -> None:
    pairs = read_pairs(lfw / "pairs.txt")
    assert len(pairs) == 6000
    assert {p.fold for p in pairs} == set(range(1, 11))
    fold6 = [p for p in pairs if p.fold == 6]
    assert len(fold6) == 600 and sum(p.same for p in fold6) == 300
    assert all(p.same for p in fold6[:300]) and not any(p.same for p in fold6[300:])
    # line 3002 of pairs.txt (first pair of fold 6), written as image paths under aligned112/
    first = (lfw / "pairs.txt").read_text().splitlines()[3001].split()
    assert fold6[0].left == f"{first[0]}/{first[0]}_{int(first[1]):04d}.jpg"
    assert (lfw / "aligned112" / fold6[0].left).is_file()


def test_parse_folds() -> None:
    assert parse_folds("6-10") == TEST_FOLDS
    assert parse_folds("6-8,10") == (6, 7, 8, 10)
    assert parse_folds("3,1,3") == (1, 3)
    for bad in ("", "a-b", "10-6", "0-2", "6-"):
        with pytest.raises(EdgefaceError):
            parse_folds(bad)


def test_select_folds_rejects_absent_folds(lfw: Path) -> None:
    pairs = read_pairs(lfw / "pairs.txt")
    assert len(select_folds(pairs, TEST_FOLDS)) == 3000
    with pytest.raises(EdgefaceError, match="not in the pairs file"):
        select_folds(pairs, (10, 11))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("10 300\nAbel_Pacheco 1\n", "expected 'name i j'"),
        ("ten 300\n", "header"),
        ("2 1\nAbel_Pacheco 1 4\n", "header promises"),
        ("1 1\nAbel_Pacheco one 4\nA 1 B 2\n", "not an integer"),
    ],
)
def test_read_pairs_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(EdgefaceError, match=fragment):
        read_pairs(path)


def test_compression_split_is_disjoint_from_test_identities(lfw: Path) -> None:
    images = compression_split(lfw)
    assert len(images) == 6922
    banned = lfw_data.test_identities(read_pairs(lfw / "pairs.txt"), TEST_FOLDS)
    assert not {p.parent.name for p in images} & banned


def test_test_images_are_unique_and_exist(lfw: Path) -> None:
    images = lfw_eval.test_images(lfw / "pairs.txt", lfw / "aligned112")
    assert len(images) == len(set(images)) == 3890
    identities = lfw_data.test_identities(read_pairs(lfw / "pairs.txt"))
    assert {p.parent.name for p in images} == identities
    with pytest.raises(EdgefaceError, match="image folder not found"):
        lfw_eval.test_images(lfw / "pairs.txt", lfw / "no_such_folder")
