"""A point of a study's space made whole: what a grid point or a recipe leaves out.

A grid point (search.study.grid) and a recipe (search.study.recipes) give some parameters; the
space is run on a stand-in trial that takes each given value, else the study's `defaults`, else
the TrialConfig field of the same name, when the space's range holds it. What is then left
(a parameter with no default inside its range) is the caller's to decide: the grid refuses it,
a recipe leaves it to the sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from objectives.config import TrialConfig
from search.study.narrowing import StandIn

if TYPE_CHECKING:
    import spaces


def defaults(spec: spaces.Study) -> dict[str, Any]:
    """A parameter's value when nothing else gives one: the study's `defaults`, else the
    TrialConfig field of its name."""
    fields = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
    return {**fields, **spec.defaults}


def contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and distribution.low <= value <= distribution.high)


def stand_in_value(distribution: BaseDistribution) -> Any:
    """Some value of the distribution, to run the rest of the space past a parameter left
    open: its first choice, or its low end."""
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    return distribution.low


class Completer(StandIn):
    """Takes each parameter from `given`, else from `defaults` if the space's range holds it,
    and keeps what the space asked in `params`. A parameter with neither goes to `missing`
    (which raises, or returns a value to run on with); without `missing` it is left open
    (in `left`, not in `params`) and the space runs on with `stand_in_value`."""

    def __init__(self, given: Mapping[str, Any], defaults: Mapping[str, Any], *,
                 missing: Callable[[str, BaseDistribution], Any] | None = None) -> None:
        self.given, self.defaults, self.missing = given, defaults, missing
        self.params: dict[str, Any] = {}
        self.left: list[str] = []

    def choose(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self.given:
            value = self.given[name]
        elif name in self.defaults and contains(distribution, self.defaults[name]):
            value = self.defaults[name]
        elif self.missing is not None:
            value = self.missing(name, distribution)
        else:
            self.left.append(name)
            return stand_in_value(distribution)
        self.params[name] = value
        return value
