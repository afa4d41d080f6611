"""The scale benchmark in its tiny mode: a real launcher per configuration, read back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from search.bench.scale import COLUMNS, Result, table
from search.bench.suite import main as bench_main


def test_the_table_marks_an_inexact_budget_and_a_skipped_count() -> None:
    done = Result("journal + sqlite", 8, 32, finished=33, seconds=10.0, cpu=0.5)
    skipped = Result("postgresql + server", 64, 256, skipped="needs about 11 GiB")
    rows = table([done, skipped])
    assert rows[0].count("|") == len(COLUMNS) + 1 and rows[1].count("|") == rows[0].count("|")
    assert "33 / 32 (not exact)" in rows[2]
    assert "skipped: needs about 11 GiB" in rows[3]
    assert all(row.count("|") == rows[0].count("|") for row in rows)


@pytest.mark.slow  # three launchers, a PostgreSQL and an MLflow server: about 2 minutes
def test_tiny_scale_run_meets_the_budget_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code = bench_main(["--only", "scale", "--scale-workers", "1,2",
                       "--scale-setup", "journal + sqlite", "--scale-setup",
                       "postgresql + server"])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("scale: ") and " workers: " in line]
    assert len(lines) == 4, lines
    assert all("skipped" not in line for line in lines), lines
    assert all(" (exact), 0 errors, 0 running" in line for line in lines), lines
    text = (tmp_path / "mlruns" / "bench" / "scale.md").read_text()
    rows = [row for row in text.splitlines() if row.startswith(("| journal", "| postgresql"))]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        per_trial = float(cells[COLUMNS.index("ms per trial")])
        assert math.isfinite(per_trial)
        assert float(cells[COLUMNS.index("trials/s")]) > 0
