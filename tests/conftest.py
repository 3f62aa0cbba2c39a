"""Shared fixtures: the real models and data in ../shared (CI clones the repo with ../shared beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models"
LFW = SHARED / "data" / "lfw"
MFN_WEIGHTS = MODELS / "mobilefacenet_ms1m.pt"
MFN_ONNX = MODELS / "mobilefacenet_ms1m.reference.onnx"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Fail loudly rather than skip: the suite is meaningless without the real model and faces.
    if not MFN_WEIGHTS.is_file() or not (LFW / "pairs.txt").is_file():
        raise pytest.UsageError(f"../shared is missing (looked in {SHARED}); see README")


@pytest.fixture(autouse=True)
def _notes_on() -> None:
    """Each test starts with `note:` lines on: an in-process `quantize --quiet` silences them for the rest
    of the process (the CLI decides again at every run; a library caller after it would not)."""
    from edgeface import quiet

    quiet.silence_notes(False)


@pytest.fixture(scope="session")
def shared() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def lfw() -> Path:
    return LFW


@pytest.fixture(scope="session")
def mfn_weights() -> Path:
    return MFN_WEIGHTS


@pytest.fixture(scope="session")
def mfn_onnx() -> Path:
    return MFN_ONNX


@pytest.fixture(scope="session")
def pair_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 aligned faces, two of each of 40 compression-split identities: enough for an export (its minimum
    is 72 calibration images) and for impostor pairs, read-only for every test that takes it."""
    import shutil

    from edgeface.data.lfw import compression_split

    by_id: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by_id.setdefault(p.parent.name, []).append(p)
    root = tmp_path_factory.mktemp("pair_faces")
    for ps in [ps[:2] for ps in by_id.values() if len(ps) >= 2][:40]:
        for p in ps:
            (root / p.parent.name).mkdir(exist_ok=True)
            shutil.copy(p, root / p.parent.name / p.name)
    return root
