"""The overhead section: its figure comes with an interval that says how far it can be trusted."""

from __future__ import annotations

import re

import numpy as np
import pytest

from search.bench.suite import main as bench_main
from search.bench.suite import median_interval
from tests.support import one_error_line


def test_the_interval_holds_the_median_and_narrows_with_more_pairs() -> None:
    rng = np.random.default_rng(3)
    few = list(0.03 + 0.1 * rng.standard_normal(12))
    many = list(0.03 + 0.1 * rng.standard_normal(400))
    for values in (few, many):
        low, high = median_interval(values)
        assert low <= float(np.median(values)) <= high
    assert np.subtract(*median_interval(many)[::-1]) < np.subtract(*median_interval(few)[::-1])
    # Many pairs pin the true median (0.03) within a few hundredths; the interval covers it.
    low, high = median_interval(many)
    assert low < 0.03 < high and high - low < 0.05


def test_an_interval_of_identical_pairs_is_that_value() -> None:
    assert median_interval([0.02] * 9) == pytest.approx((0.02, 0.02))
    with pytest.raises(ValueError, match="no values"):
        median_interval([])


@pytest.mark.parametrize("flag", ["--rounds", "--trials"])
def test_no_pairs_to_measure_is_one_line(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main(["--only", "overhead", flag, "0"])
    assert exited.value.code == 2
    assert f"{flag}: must be a positive integer" in one_error_line(capsys.readouterr().err,
                                                                    "search.bench")


@pytest.mark.slow
def test_the_overhead_section_prints_its_median_with_an_interval(
        capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert bench_main(["--only", "overhead", "--trials", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    share = re.search(r"overhead: ([+-]\d+\.\d+)% of trial time \(median of 2 pairs, 95% "
                      r"interval ([+-]\d+\.\d+)% to ([+-]\d+\.\d+)%", out)
    absolute = re.search(r"overhead: ([+-]\d+) ms a trial \(median of the pairs' differences, "
                         r"95% interval ([+-]\d+) to ([+-]\d+) ms\)", out)
    assert share and absolute, out
    for found in (share, absolute):
        median, low, high = map(float, found.groups())
        assert low <= median <= high
