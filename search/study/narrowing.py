"""What a study's space is, and how a user narrows it without code.

`parameters` finds every parameter a define-by-run space can suggest, with its distribution, by
running the space on a recording trial down every branch of its categorical choices (the
conditional parameters live under those). Written here because Optuna learns a space only from
trials that ran.

`Narrowing` is the command line's `--fix NAME=VALUE` and `--choices NAME=A,B`, checked against
those parameters, plus the study's categorical choices pinned when it was created (so that a
newer version, with a loss more, still resumes an older study over its old choices). It is
applied by wrapping each trial: a fixed parameter is suggested over its one value (so it is
recorded and logged like any other), a categorical over its narrowed or pinned choices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from search.core.errors import UsageError

if TYPE_CHECKING:
    import spaces
    from spaces.base import Space as StudySpace

# The space is run once per combination of categorical choices: a space with more (a choice
# between many numbers nested deep) is refused rather than probed for minutes.
MAX_BRANCHES = 50_000

Space = Callable[[optuna.Trial, Any], Any]


# --- the space's parameters -------------------------------------------------------------------

class StandIn:
    """Stands in for an Optuna trial where a space is run without a study: each suggest_*
    builds the parameter's distribution and asks `choose` for its value."""

    number = 0  # what else a space may read of its trial

    @property
    def user_attrs(self) -> dict[str, Any]:
        return {}

    def choose(self, name: str, distribution: BaseDistribution) -> Any:
        raise NotImplementedError

    def suggest_categorical(self, name: str, choices: Sequence[CategoricalChoiceType]) -> Any:
        return self.choose(name, CategoricalDistribution(choices))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return float(self.choose(name, FloatDistribution(low, high, step=step, log=log)))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        return int(self.choose(name, IntDistribution(low, high, step=step, log=log)))


class _Recorder(StandIn):
    """Takes the categorical choices of one branch (`path`), the low end of every number, and
    records every parameter with its distribution in `seen`."""

    def __init__(self, path: Sequence[int], fixed: Mapping[str, Any],
                 seen: dict[str, BaseDistribution]) -> None:
        self.path = list(path)
        self.widths: list[int] = []  # the number of choices of each categorical met
        self.fixed = fixed
        self.seen = seen

    def choose(self, name: str, distribution: BaseDistribution) -> Any:
        self.seen.setdefault(name, distribution)
        if name in self.fixed:
            return self.fixed[name]
        if not isinstance(distribution, CategoricalDistribution):
            assert isinstance(distribution, (FloatDistribution, IntDistribution))
            return distribution.low
        at = len(self.widths)
        self.widths.append(len(distribution.choices))
        return distribution.choices[self.path[at] if at < len(self.path) else 0]


def parameters(space: Space, settings: Any, *,
               fixed: Mapping[str, Any] | None = None) -> dict[str, BaseDistribution]:
    """Every parameter `space` suggests under `settings` (with `fixed` values held), in the
    order first met, with its distribution."""
    fixed = fixed or {}
    seen: dict[str, BaseDistribution] = {}
    path: list[int] = []
    for _ in range(MAX_BRANCHES):
        recorder = _Recorder(path, fixed, seen)
        space(cast(optuna.Trial, recorder), settings)
        widths = recorder.widths
        path = path[:len(widths)] + [0] * (len(widths) - len(path))
        # The next branch: count up the last choice that has another, like an odometer.
        while path and path[-1] + 1 >= widths[len(path) - 1]:
            path.pop()
        if not path:
            return seen
        path[-1] += 1
    raise UsageError(f"the space has more than {MAX_BRANCHES} combinations of categorical "
                     "choices: narrow it with --fix or --choices")


# --- the command line's narrowing -------------------------------------------------------------

def parse_assignment(text: str) -> tuple[str, str]:
    """`NAME=VALUE` as (name, value text)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"must be NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def describe_distribution(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(map(str, distribution.choices))
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    kind = "a number" if isinstance(distribution, FloatDistribution) else "an integer"
    return f"{kind} from {distribution.low:g} to {distribution.high:g}"


def convert(name: str, text: str, distribution: BaseDistribution, *, flag: str) -> Any:
    """`text` as a value of `distribution`, or a UsageError naming what the space takes."""
    problem = f"{flag} {name}={text}: {name} is {describe_distribution(distribution)}"
    if isinstance(distribution, CategoricalDistribution):
        for choice in distribution.choices:
            if str(choice) == text or (isinstance(choice, str) and choice.lower() == text.lower()):
                return choice
        raise UsageError(problem)
    try:
        if isinstance(distribution, IntDistribution):
            value: float = int(text)
        else:
            value = float(text)
    except ValueError:
        raise UsageError(problem) from None
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    if not (math.isfinite(value) and distribution.low <= value <= distribution.high):
        raise UsageError(problem)
    if isinstance(distribution, IntDistribution) and (
            (value - distribution.low) % distribution.step):
        raise UsageError(f"{problem} in steps of {distribution.step}")
    return value


@dataclass(frozen=True)
class Narrowing:
    """Parameters held at one value, categoricals searched over fewer choices, and the choices
    every categorical was created with (`pinned`)."""

    fixed: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    pinned: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.fixed or self.choices)

    def asked(self) -> dict[str, Any]:
        """The user's narrowing as stored with the study (JSON)."""
        return {"fix": dict(self.fixed), "choices": {k: list(v) for k, v in self.choices.items()}}

    def describe(self) -> str:
        """For logs and tags: `loss=focal; optimizer in adamw,sgd`."""
        parts = [f"{k}={v}" for k, v in self.fixed.items()]
        parts += [f"{k} in {','.join(map(str, v))}" for k, v in self.choices.items()]
        return "; ".join(parts)

    def apply(self, space: StudySpace) -> StudySpace:
        """`space` with this narrowing: its trials see the fixed values and the choices."""
        if not (self or self.pinned):
            return space
        return cast("StudySpace", functools.partial(_narrowed, space, self))


def _narrowed(space: Space, narrowing: Narrowing, trial: optuna.Trial, settings: Any) -> Any:
    return space(cast(optuna.Trial, _NarrowedTrial(trial, narrowing)), settings)


class _NarrowedTrial:
    """An Optuna trial as a narrowed space sees it; everything but suggest_* passes through."""

    def __init__(self, trial: optuna.Trial, narrowing: Narrowing) -> None:
        self._trial = trial
        self._narrowing = narrowing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def suggest_categorical(self, name: str, choices: Sequence[CategoricalChoiceType]) -> Any:
        fixed, narrowing = self._narrowing.fixed, self._narrowing
        if name in fixed:
            return self._trial.suggest_categorical(name, (fixed[name],))
        choices = narrowing.choices.get(name) or narrowing.pinned.get(name) or tuple(choices)
        return self._trial.suggest_categorical(name, choices)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if name in self._narrowing.fixed:
            value = float(self._narrowing.fixed[name])
            return self._trial.suggest_float(name, value, value)
        return self._trial.suggest_float(name, low, high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        if name in self._narrowing.fixed:
            value = int(self._narrowing.fixed[name])
            return self._trial.suggest_int(name, value, value)
        return self._trial.suggest_int(name, low, high, step=step, log=log)


def pinned_choices(space: Space, settings: Any) -> dict[str, tuple[Any, ...]]:
    """Every categorical parameter of the space with its choices today."""
    return {name: tuple(d.choices) for name, d in parameters(space, settings).items()
            if isinstance(d, CategoricalDistribution)}


def narrow(spec: spaces.Study, settings: Any, *, fix: Sequence[tuple[str, str]] = (),
           choices: Sequence[tuple[str, str]] = (),
           pinned: Mapping[str, Sequence[Any]] | None = None) -> Narrowing:
    """The command line's `--fix` and `--choices` (name and value text), checked against the
    study's space over its `pinned` choices: one UsageError line for an unknown parameter, a
    value outside the space, a parameter given twice, or one whose condition is fixed off."""
    pins = {k: tuple(v) for k, v in (pinned or {}).items()}
    base = Narrowing(pinned=pins).apply(spec.space)
    known = parameters(base, settings)
    given: dict[str, str] = {}
    for flag, items in (("--fix", fix), ("--choices", choices)):
        for name, _ in items:
            if name in given:
                raise UsageError(f"{flag} {name}: {name} is already given by {given[name]}; "
                                 "give each parameter once")
            if name not in known:
                raise UsageError(f"{flag} {name}: study {spec.name!r} has no parameter "
                                 f"{name!r}; its parameters are {', '.join(known)}")
            given[name] = flag
    fixed = {name: convert(name, text, known[name], flag="--fix") for name, text in fix}
    narrowed: dict[str, tuple[Any, ...]] = {}
    for name, text in choices:
        distribution = known[name]
        if not isinstance(distribution, CategoricalDistribution):
            raise UsageError(f"--choices {name}: {name} is {describe_distribution(distribution)}; "
                             "--choices narrows a categorical parameter (use --fix for a "
                             "number)")
        wanted = {convert(name, t, distribution, flag="--choices") for t in text.split(",")
                  if t.strip()} if text else set()
        subset = tuple(c for c in distribution.choices if c in wanted)
        if not subset:
            raise UsageError(f"--choices {name}={text}: give at least one of "
                             f"{', '.join(map(str, distribution.choices))}")
        narrowed[name] = subset
    narrowing = Narrowing(fixed=fixed, choices=narrowed, pinned=pins)
    if fixed:
        # A parameter that exists only under a choice the fixing rules out is never searched.
        reachable = parameters(base, settings, fixed=fixed)
        held = ", ".join(f"{k}={v}" for k, v in fixed.items()
                         if isinstance(known[k], CategoricalDistribution))
        for name, flag in given.items():
            if name not in reachable:
                raise UsageError(f"{flag} {name}: {name} is never searched with --fix {held} "
                                 "(it belongs to another choice); drop one of the two")
    return narrowing


def as_stored(spec: spaces.Study, settings: Any, attrs: Mapping[str, Any]) -> Narrowing:
    """The narrowing a study was created with (its `narrowing` and `choices` attrs), checked
    again against today's space."""
    asked = attrs.get("narrowing") or {}
    return narrow(spec, settings,
                  fix=[(k, str(v)) for k, v in (asked.get("fix") or {}).items()],
                  choices=[(k, ",".join(map(str, v)))
                           for k, v in (asked.get("choices") or {}).items()],
                  pinned=attrs.get("choices"))


def for_study(spec: spaces.Study, settings: Any, stored: Mapping[str, Any] | None, trials: int,
              *, fix: Sequence[tuple[str, str]], choices: Sequence[tuple[str, str]],
              name: str) -> Narrowing:
    """Study `name`'s narrowing: as stored (a resume), or as asked (a new study), over the
    categorical choices pinned when the study was created (today's, for a new one); a resume
    asked for another narrowing is refused (one line)."""
    pinned = (stored or {}).get("choices") or pinned_choices(spec.space, settings)
    asked = narrow(spec, settings, fix=fix, choices=choices, pinned=pinned)
    if stored is None or not trials:
        return asked
    kept = as_stored(spec, settings, stored)
    if (fix or choices) and asked.asked() != kept.asked():
        was = kept.describe() or "no narrowing"
        raise UsageError(f"study {name!r} was created with {was}, not {asked.describe()}: leave "
                         "--fix and --choices out to resume it, or give --name NEW to start "
                         "another study")
    return kept
