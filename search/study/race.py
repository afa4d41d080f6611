"""A race of the finalists: what it is and how it decides, with no I/O.

One validation score is noisy, and the best of many noisy scores overstates itself: the trial
with the best validation score is partly chosen by noise. So a single-objective search ends
with a race (run by search.execution.race). Its finalists are the K best configurations of the
search and the best standard recipe. Each is trained again on R fresh resamplings of the
labelled pool: round r trains every finalist still in the race with the same new seed on the
same new stratified split of train + validation (objectives.data.ImageData.resampled; the test
split is never read).

Paired on the resamplings both have run, a finalist is dropped once the leader (the best mean)
beats it beyond the noise: the one-sided 95% paired t bound of the difference is above zero
(`beats`). The incumbent (the best recipe) is never dropped: like SMAC's incumbent it runs on
every resampling, so that every challenger is compared with it on all of them.

The decision: the leader is the finalist with the best mean over the resamplings. A searched
configuration replaces the recipe only when it beats it beyond the noise, by the same rule;
otherwise the recipe is the pick, and the answer says so plainly. A study without recipes
picks its leader.

Written here rather than taken from a library: irace and SMAC race configurations in their own
runners, and Optuna's WilcoxonPruner prunes within one trial's instances, where a rank test over
three resamplings can never reach significance (its smallest one-sided p-value is 1/8).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.core import names
from search.study.stats import interval

DEFAULT = (2, 3)  # finalists searched, resamplings: see docs/fair-comparison.md for why
CONFIDENCE = 0.95  # one-sided, of the paired bound that drops a finalist or replaces the recipe
SEARCHED, RECIPE, LEADER = "searched", "recipe", "leader"  # the decisions


@dataclass(frozen=True)
class RaceSize:
    finalists: int  # the best K searched configurations (the best recipe comes on top)
    resamplings: int  # R rounds, one resampling each


RACE_ENV = "FINETUNE_SEARCH_RACE"  # a default for --race (K,R or none) where none is given


def parse_race(text: str | None) -> RaceSize | None:
    """`--race K,R` as a RaceSize, `none` as None; not given (None): $FINETUNE_SEARCH_RACE when
    set, else the default. ValueError (one line) for anything else."""
    if text is None:
        found = os.environ.get(RACE_ENV, "").strip()
        if not found:
            return RaceSize(*DEFAULT)
        try:
            return parse_race(found)
        except ValueError as e:
            raise ValueError(f"{e} (from ${RACE_ENV})") from None
    if text.strip().lower() == "none":
        return None
    parts = [p.strip() for p in text.split(",")]
    usage = (f"--race takes K,R (K >= 1 finalists, R >= 2 resamplings, e.g. "
             f"{DEFAULT[0]},{DEFAULT[1]}) or none, got {text!r}")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(usage)
    k, r = int(parts[0]), int(parts[1])
    if k < 1 or r < 2:
        raise ValueError(usage)
    return RaceSize(k, r)


def resampling_seed(study_seed: int, round_: int) -> int:
    """The seed of round `round_`'s split and training: fixed by the study's seed, unlike any
    seed a trial of the search trains with (those are the study's seed itself)."""
    return zlib.crc32(f"race:{study_seed}:{round_}".encode()) % 2**31


@dataclass(frozen=True)
class Finalist:
    label: str  # "trial 12", or "recipe adamw"
    trial: int  # its trial in the search (a recipe's too): what search.refit refits
    params: dict[str, Any]
    value: float | None  # its score in the search (None: a recipe pruned there)
    recipe: str | None = None


def finalists(trials: Sequence[FrozenTrial], k: int, *, maximize: bool) -> list[Finalist]:
    """The `k` best distinct searched configurations by their score in the search, best first,
    then the best recipe (by its score; a recipe the pruner stopped counts by its last report,
    and still races: it is the known-good incumbent)."""
    def score(t: FrozenTrial) -> float | None:
        if t.state == TrialState.COMPLETE:
            return t.values[0]
        if t.state == TrialState.PRUNED and t.intermediate_values:
            return t.intermediate_values[max(t.intermediate_values)]
        return None

    def rank(t: FrozenTrial) -> float:
        value = score(t)
        assert value is not None
        return -value if maximize else value

    searched = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.params
                       and not t.user_attrs.get(names.RECIPE)), key=rank)
    chosen: list[Finalist] = []
    seen: set[str] = set()
    for trial in searched:
        key = json.dumps(trial.params, sort_keys=True, default=str)
        if key not in seen and len(chosen) < k:
            seen.add(key)
            chosen.append(Finalist(f"trial {trial.number}", trial.number, dict(trial.params),
                                   score(trial)))
    recipes = sorted((t for t in trials if t.user_attrs.get(names.RECIPE) and t.params
                      and score(t) is not None), key=rank)
    if recipes:
        best = recipes[0]
        name = str(best.user_attrs[names.RECIPE])
        chosen.append(Finalist(f"recipe {name}", best.number, dict(best.params), score(best),
                               recipe=name))
    return chosen


# --- statistics -------------------------------------------------------------------------------

def _t(confidence: float, df: int) -> float:
    from scipy.stats import t  # scikit-learn's own dependency

    return float(t.ppf(confidence, df))


def differences(a: Mapping[int, float], b: Mapping[int, float], *,
                maximize: bool) -> list[float]:
    """a - b on each round both have, oriented so that positive is better for a."""
    sign = 1.0 if maximize else -1.0
    return [sign * (a[r] - b[r]) for r in sorted(set(a) & set(b))]


def beats(a: Mapping[int, float], b: Mapping[int, float], *, maximize: bool,
          confidence: float = CONFIDENCE) -> bool:
    """Whether `a` beats `b` beyond the noise: on at least two shared rounds, the one-sided
    paired t bound of their difference is above zero (with no spread at all, every difference
    must be above zero)."""
    d = differences(a, b, maximize=maximize)
    if len(d) < 2:
        return False
    spread = statistics.stdev(d)
    if spread == 0.0:
        return min(d) > 0
    return statistics.fmean(d) - _t(confidence, len(d) - 1) * spread / math.sqrt(len(d)) > 0


def mean(scores: Mapping[int, float]) -> float:
    return statistics.fmean(scores.values())


def leader(scores: Mapping[str, Mapping[int, float]], *, maximize: bool,
           among: Sequence[str] | None = None) -> str | None:
    """The finalist with the best mean over its rounds (ties: the one listed first)."""
    live = [f for f in (among if among is not None else list(scores)) if scores.get(f)]
    if not live:
        return None
    best = (max if maximize else min)(mean(scores[f]) for f in live)
    return next(f for f in live if mean(scores[f]) == best)


def to_drop(scores: Mapping[str, Mapping[int, float]], *, out: set[str],
            incumbent: str | None, maximize: bool, confidence: float = CONFIDENCE) -> set[str]:
    """Finalists still in the race that the leader beats beyond the noise (never the
    incumbent), given each one's scores by round and those already out."""
    live = [f for f in scores if f not in out]
    top = leader(scores, maximize=maximize, among=live)
    if top is None:
        return set()
    return {f for f in live if f not in (top, incumbent)
            and beats(scores[top], scores[f], maximize=maximize, confidence=confidence)}


# --- the decision -----------------------------------------------------------------------------

@dataclass
class Entry:
    """One finalist's race, as stored with the study."""

    label: str
    trial: int
    params: dict[str, Any]
    value: float | None  # in the search
    recipe: str | None
    scores: dict[int, float] = field(default_factory=dict)  # round -> validation score
    dropped: int | None = None  # the round it was dropped before
    failed: int = 0  # runs that failed
    mean: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass
class Result:
    """What a race decided, stored with the study (names.RACE) as JSON."""

    study: str  # the race's own Optuna study
    finalists: list[Entry]
    resamplings: int
    metric: str
    maximize: bool
    pick: str | None  # the label of the pick
    decision: str  # SEARCHED, RECIPE or LEADER; "" when nothing finished
    statement: str  # the decision in words
    difference: dict[str, float] | None = None  # leader minus incumbent: mean, low, high
    epochs: int = 0  # trained by the race's runs

    def entry(self, label: str | None) -> Entry | None:
        return next((e for e in self.finalists if e.label == label), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for entry in data["finalists"]:  # JSON keys are strings
            entry["scores"] = {str(k): v for k, v in entry["scores"].items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        entries = []
        for raw in data["finalists"]:
            entry = Entry(**{**raw, "scores": {int(k): float(v)
                                               for k, v in raw["scores"].items()}})
            entries.append(entry)
        return cls(**{**data, "finalists": entries})


def decide(finalists_: Sequence[Finalist], scores: Mapping[str, Mapping[int, float]], *,
           dropped: Mapping[str, int], resamplings: int,
           maximize: bool, metric: str, study: str, epochs: int = 0) -> Result:
    """The race's result from each finalist's scores by round and the round each dropped
    finalist left before."""
    entries = []
    for f in finalists_:
        got = dict(scores.get(f.label, {}))
        entry = Entry(f.label, f.trial, f.params, f.value, f.recipe, got, dropped.get(f.label),
                      _failed(got, dropped.get(f.label), resamplings))
        if got:
            spread = interval(list(got.values()))
            entry.mean = spread.mean
            if spread.n > 1:
                entry.low, entry.high = spread.low, spread.high
        entries.append(entry)
    incumbent = next((e for e in entries if e.recipe is not None and e.scores), None)
    standing = [e.label for e in entries if e.dropped is None and len(e.scores) >= 2]
    if not standing:  # too few runs finished: the best by what there is
        standing = [e.label for e in entries if e.scores]
    top_label = leader({e.label: e.scores for e in entries}, maximize=maximize, among=standing)
    result = Result(study=study, finalists=entries, resamplings=resamplings, metric=metric,
                    maximize=maximize, pick=None, decision="", statement="", epochs=epochs)
    top = result.entry(top_label)
    if top is None:
        result.statement = "the race has no finished run: no pick"
        return result
    shown = f"{metric} {_mean(top)}"
    if incumbent is None:
        result.pick, result.decision = top.label, LEADER
        result.statement = (f"{top.label} leads the race ({shown} over "
                            f"{len(top.scores)} resamplings); no recipe raced")
        return result
    d = differences(top.scores, incumbent.scores, maximize=maximize)
    if d and top is not incumbent:
        gap = interval(d)
        result.difference = {"mean": gap.mean, "low": gap.low, "high": gap.high}
    if top is incumbent:
        result.pick, result.decision = incumbent.label, RECIPE
        result.statement = (f"the {incumbent.label} leads the race ({shown}): nothing searched "
                            "beat it")
    elif beats(top.scores, incumbent.scores, maximize=maximize):
        result.pick, result.decision = top.label, SEARCHED
        result.statement = (f"{top.label} beats the {incumbent.label} beyond the noise "
                            f"({_gap(result)} on the same resamplings)")
    else:
        result.pick, result.decision = incumbent.label, RECIPE
        result.statement = (f"the {incumbent.label} is as good as anything found, within noise "
                            f"(the leader, {top.label}: {_gap(result)})")
    return result


def _failed(scores: Mapping[int, float], dropped: int | None, resamplings: int) -> int:
    """Rounds a finalist was due to run (before it was dropped, if it was) with no score."""
    last = resamplings if dropped is None else dropped - 1
    return sum(1 for r in range(1, last + 1) if r not in scores)


def _mean(entry: Entry) -> str:
    if entry.mean is None:
        return "-"
    if entry.low is None or entry.high is None or len(entry.scores) < 2:
        return f"{entry.mean:.4f}"
    return f"{entry.mean:.4f} ({entry.low:.4f} to {entry.high:.4f})"


def _gap(result: Result) -> str:
    d = result.difference
    if d is None:
        return "no shared resampling"
    return (f"{d['mean'] * 100:+.2f} points, 95% interval {d['low'] * 100:+.2f} to "
            f"{d['high'] * 100:+.2f}")


def rows(result: Result) -> list[list[str]]:
    """The race as table rows: finalist, search score, each round, mean (interval), status."""
    table = []
    for e in result.finalists:
        rounds = [f"{e.scores[r]:.4f}" if r in e.scores else "-"
                  for r in range(1, result.resamplings + 1)]
        if e.label == result.pick:
            status = "pick"
        elif e.dropped is not None:
            status = f"dropped before round {e.dropped}"
        elif e.failed and len(e.scores) < result.resamplings:
            status = f"{e.failed} run(s) failed"
        else:
            status = ""
        search = "-" if e.value is None else f"{e.value:.4f}"
        table.append([e.label, search, *rounds, _mean(e), status])
    return table


def header(result: Result) -> list[str]:
    return ["finalist", "in search", *(f"round {r}" for r in range(1, result.resamplings + 1)),
            "mean (95% interval)", ""]


def race_table(result: Result) -> Any:
    """The race as a rich Table, for search.run's ending and search.report."""
    from rich.table import Table

    table = Table(title=f"race: {len(result.finalists)} finalists on {result.resamplings} "
                        f"resamplings of train + validation ({result.metric})")
    names = header(result)
    for i, name in enumerate(names):
        table.add_column(name, justify="left" if i in (0, len(names) - 1) else "right")
    for row in rows(result):
        table.add_row(*row)
    return table
