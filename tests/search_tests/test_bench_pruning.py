"""The pruning benchmark: pruners at equal epoch budgets, on the curves study in seconds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from search.bench.pruning import CANDIDATES, DEFAULT, Search, compare, run_search, table, write
from search.bench.suite import main as bench_main
from search.study.optuna_study import HYPERBAND_MIN_RESOURCE


def test_the_best_counts_only_trials_finished_within_the_budget() -> None:
    found = Search(spent=[15, 16, 31, 40, 55], values=[0.8, None, 0.85, None, 0.9])
    assert found.best(50) == 0.85  # the 0.9 came after 55 epochs
    assert found.best(60) == 0.9
    assert math.isnan(found.best(10))
    assert found.reached(0.85, 50) == pytest.approx(31 / 50)
    assert found.reached(0.9, 50) == math.inf  # not within the budget


def test_a_search_stops_once_its_epochs_are_spent() -> None:
    import spaces
    from search.bench.pruning import _task

    task = _task(spaces.get_study("curves"), 0)
    found = run_search("curves", CANDIDATES["none"](15), seed=0, task=task, budget=40)
    assert found.spent[-1] >= 40 and found.spent[-2] < 40
    pruned = run_search("curves", CANDIDATES["hyperband, min 1"](15), seed=0, task=task,
                        trials=30)
    assert len(pruned.spent) == 30
    steps = [b - a for a, b in zip([0, *pruned.spent[:-1]], pruned.spent, strict=True)]
    assert min(steps) < 15  # some trials stopped early


@pytest.mark.slow  # about 30 searches
def test_every_candidate_and_the_patient_one_get_the_unpruned_budget(tmp_path: Path) -> None:
    lines: list[str] = []
    result = compare("curves", seeds=[0, 1], trials=10, log=lines.append)
    rows = result["rows"]
    assert list(rows) == [*CANDIDATES, next(n for n in rows if n.startswith("patient("))]
    assert rows["none"].gap == [0.0, 0.0]  # the reference against itself
    assert all(0 < r <= 1 for r in rows["none"].reached)
    assert all(t == 10 for t in rows["none"].trials)
    # Pruned searches spend the same epochs on more trials.
    assert all(t >= 10 for t in rows["hyperband, min 1"].trials)
    assert len(lines) == len(rows)
    written = write([result], out=tmp_path)
    text = (tmp_path / "pruning.md").read_text()
    assert "\n".join(table(result)) in text
    assert DEFAULT == f"hyperband, min {HYPERBAND_MIN_RESOURCE}"
    verdict = next(line for line in written if line.startswith(f"curves: {DEFAULT}:"))
    assert verdict in text and verdict.endswith(("met", "not met"))


@pytest.mark.slow  # about 14 searches
def test_the_section_writes_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert bench_main(["--only", "pruning", "--pruning-study", "curves", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "| hyperband, min 3 |" in out
    assert (tmp_path / "mlruns" / "bench" / "pruning.md").is_file()
