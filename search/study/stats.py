"""Means with Student's t intervals: the noise every comparison of scores here is judged by."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # a 95% interval (Student's t over the seeds); nan with a single value
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def points(self) -> str:
        """As accuracy points: '+1.2 [-0.3, +2.7]'."""
        if self.n < 2 or math.isnan(self.low):
            return f"{100 * self.mean:+.1f}"
        return f"{100 * self.mean:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def interval(values: Sequence[float]) -> Interval:
    """The mean with its 95% t interval (nan ends for fewer than two values)."""
    from scipy import stats

    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)
