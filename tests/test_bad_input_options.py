"""Numeric options of every command: generated from the commands themselves, so an option added later with a
bare `type=float` fails here instead of letting NaN through.

Each numeric option must use a type of edgeface.cli.options (finite, in range, inside the C int range);
each gets NaN, infinities, out-of-range and non-numeric values, and each must be one error line naming it,
exit 2, with nothing written, before any model is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import pytest

from edgeface.cli.main import COMMANDS, cli
from edgeface.cli.options import C_INT_MAX, Count, FiniteFloat, machine_cores
from tests.test_bad_input_support import FACE, LFW, artifact, assert_one_error, run, snapshot


def _commands() -> list[tuple[list[str], click.Command]]:
    ctx = click.Context(cli)
    out: list[tuple[list[str], click.Command]] = []
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            out += [([name, sub], cmd.commands[sub]) for sub in cmd.commands]
        else:
            out.append(([name], cmd))
    return out


def _numeric_options() -> list[tuple[list[str], click.Option]]:
    return [
        (path, p)
        for path, cmd in _commands()
        for p in cmd.params
        if isinstance(p, click.Option)
        and isinstance(p.type, click.types.FloatParamType | click.types.IntParamType)
    ]


NUMERIC = _numeric_options()


def test_every_numeric_option_is_finite_and_bounded() -> None:
    assert len(NUMERIC) >= 25  # threads, thresholds, FAR, lr, budgets, counts of every command
    for path, opt in NUMERIC:
        where = f"edgeface {' '.join(path)} {opt.opts[0]}"
        assert isinstance(opt.type, FiniteFloat | Count), f"{where}: use a type from edgeface.cli.options"
        if isinstance(opt.type, Count):
            assert opt.type.min is not None and opt.type.max is not None and opt.type.max <= C_INT_MAX, where


def _bad_values(opt: click.Option) -> list[str]:
    t = opt.type
    values = ["abc"]
    if isinstance(t, FiniteFloat):
        values += ["nan", "inf", "-inf"]
        if t.min is not None:
            values.append(repr(t.min if t.min_open else t.min - 1))
        if t.max is not None:
            values.append(repr(t.max if t.max_open else t.max + 1))
    else:
        assert isinstance(t, Count)
        values += ["1.5", str(C_INT_MAX + 1), str(t.min - 1), "1e3", str(10**100)]
    return values


CASES = [
    pytest.param(path, opt.opts[0], value, id=f"{'-'.join(path)}{opt.opts[0]}={value}")
    for path, opt in NUMERIC
    for value in _bad_values(opt)
]


@pytest.mark.parametrize("path, flag, value", CASES)
def test_bad_numeric_option(
    path: list[str], flag: str, value: str, capsys, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    r = run(capsys, *path, flag, value)
    assert_one_error(r, f"'{flag}'")
    assert snapshot(tmp_path) == before


def test_threads_are_capped_at_the_machine_cores_with_a_warning(capsys) -> None:
    """--threads 100000 used to segfault onnxruntime; now it runs on the machine's cores."""
    r = run(capsys, "profile", artifact(), "--threads", "100000", "--runs", "1", "--warmup", "0")
    assert r.code == 0, r.err
    cores = machine_cores()
    assert f"warning: --threads 100000 is more than this machine's {cores} cores; using {cores}" in r.err
    assert f"threads {cores}," in r.out


def test_profile_time_budget_bounds_a_huge_run_count(capsys) -> None:
    """--runs is capped (1,000,000) and --max-seconds ends the loops early, reporting the runs done."""
    r = run(
        capsys, "profile", artifact(), "--runs", "1000000", "--max-seconds", "1", "--no-operators", "--json"
    )
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["stopped_by_budget"] is True and data["runs_requested"] == 1_000_000
    assert 1 <= data["runs"] < 1_000_000 and 1 <= data["pipeline_runs"] < 1_000_000
    assert "warning: --max-seconds 1 reached" in r.err


def test_folds_are_bounded_before_they_are_expanded(capsys, tmp_path: Path) -> None:
    """'1-2000000000' used to build a set of two billion ints; it is now refused against the pairs file."""
    for folds, fragment in (
        ("1-2000000000", "fold 2000000000 is not in the pairs file (it has 1-10)"),
        ("11", "fold 11 is not in the pairs file"),
        ("0-3", "start at 1"),
        ("3-1", "cannot read"),
        ("1-" + "9" * 30, "not in the pairs file"),
        ("1-" + "9" * 5000, "cannot read"),  # past Python's int-from-text limit
    ):
        r = run(
            capsys,
            "eval",
            "-m",
            "mobilefacenet",
            "--pairs",
            LFW / "pairs.txt",
            "--images",
            LFW / "aligned112",
            "--folds",
            folds,
            "--json",
            tmp_path / "r.json",
        )
        assert_one_error(r, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-1", "1", "0.3"])
def test_threshold_range_edges_are_valid(value: str, capsys) -> None:
    r = run(capsys, "verify", FACE, FACE, "--model", artifact(), "--threshold", value, "--json")
    assert r.code == 0, r.err
    assert math.isclose(json.loads(r.out)["threshold"], float(value))


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e400", "abcKB", "12 parsecs", "NaNMB"])
def test_bad_size_budget(value: str, capsys, tmp_path: Path, monkeypatch) -> None:
    """--size-budget is text (bytes, KB/MB or a ratio) but a number all the same: NaN used to reach int()."""
    monkeypatch.chdir(tmp_path)
    r = run(capsys, "quantize", "--bits", "mixed", "--size-budget", value)
    assert_one_error(r, "'--size-budget'")
    assert list(tmp_path.iterdir()) == []
