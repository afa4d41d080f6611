"""Which loss (and penalty) to use, in a few plain sentences, and how sure that is.

From `search.refit --per-family` when it has run (each family's best trial refit with several
seeds and tested once: means with 95% intervals over the seeds, and paired differences, seed
by seed, against cross-entropy and the best family), else from validation alone, where nothing
says how large the noise is and the verdict says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.core.names import REFITS  # noqa: F401 (re-exported)
from search.study.display import describe_params, recipe_mark
from search.study.stats import Interval, interval

METRICS = ("test_accuracy", "test_macro_f1", "test_ece", "test_corruption_accuracy")
BASELINE = {"loss": "cross_entropy", "penalty": "none"}  # what a margin is measured against


def paired(a: Sequence[float], b: Sequence[float]) -> Interval:
    """a - b, seed by seed: the same seed gives both the same data order and initial head."""
    return interval([x - y for x, y in zip(a, b, strict=True)])


def family_trials(study: optuna.Study, by: str) -> dict[Any, list[FrozenTrial]]:
    """Each family's trials (every state), families in the order first seen."""
    found: dict[Any, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        if by in trial.params:
            found.setdefault(trial.params[by], []).append(trial)
    return found


def family_best(trials: Sequence[FrozenTrial], value: Callable[[FrozenTrial], float],
                maximize: bool) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return (max if maximize else min)(done, key=value) if done else None


def counts(trials: Sequence[FrozenTrial]) -> str:
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    return f"{len(trials)} ({done} completed, {pruned} pruned)"


def stored_refits(study: optuna.Study, by: str) -> Mapping[str, Any] | None:
    return study.user_attrs.get(f"{REFITS}:{by}")


def verdict(study: optuna.Study, *, by: str = "loss", value: Callable[[FrozenTrial], float],
            metric: str, maximize: bool) -> str:
    """The verdict paragraph (empty when no trial has a `by` family and a completed value)."""
    families = family_trials(study, by)
    refits = stored_refits(study, by)
    text = (_from_refits(by, refits, study) if refits and refits.get("families")
            else _from_validation(study, by, families, value, metric, maximize))
    if not text:
        return ""
    line = "; ".join(f"{f} {counts(ts)}" for f, ts in families.items())
    text += f" Trials behind each {by} family: {line}."
    sizes = {len(ts) for ts in families.values()}
    if len(sizes) > 1 and study.user_attrs.get("balance") != by:
        text += (f" The families were not searched on equal budgets: for a fair comparison run "
                 f"a search with --balance {by}.")
    return text


def _config(params: Mapping[str, Any]) -> str:
    return describe_params(dict(params))


def _from_refits(by: str, refits: Mapping[str, Any], study: optuna.Study) -> str:
    rows = refits["families"]
    seeds = len(refits["seeds"])
    means = {f: statistics.fmean(r["test_accuracy"]) for f, r in rows.items()}
    best = max(means, key=lambda f: means[f])
    chosen = rows[best]
    accuracy = interval(chosen["test_accuracy"])
    baseline = BASELINE.get(by)
    others = [f for f in rows if f != best]
    # The margin: over the baseline, or (the baseline on top) the runner-up's from it.
    gap = None
    if baseline in rows and baseline != best:
        gap = paired(chosen["test_accuracy"], rows[baseline]["test_accuracy"])
    elif baseline == best and others:
        second = max(others, key=lambda f: means[f])
        gap = paired(rows[second]["test_accuracy"], chosen["test_accuracy"])
    settled = baseline == best or (gap is not None and gap.excludes_zero)
    text = (f"Verdict ({by}, from refits of each family's best trial with {seeds} seed"
            f"{'s' * (seeds != 1)}, tested once on the held-out test split): "
            + ("use" if settled else "highest test accuracy:")
            + f" {best}, as in trial {chosen['trial']}{_mark(study, chosen['trial'])} "
            f"[{_config(chosen['params'])}], with "
            f"test accuracy {accuracy.mean:.4f}"
            + (f" (95% interval {accuracy.low:.4f} to {accuracy.high:.4f})" if seeds > 1 else "")
            + ".")
    if gap is None:
        text += f" {baseline} was not refit, so there is no margin over it."
    elif baseline == best:
        text += (f" That is the baseline; the next family, {second}, is {gap.points()} points "
                 f"of test accuracy from it: {_sureness(gap)}.")
    else:
        text += (f" Over {baseline}'s best, refit with the same seeds: {gap.points()} points "
                 f"of test accuracy (paired over seeds), {_sureness(gap)}")
        text += (f": {baseline} is as good as far as {seeds} seeds can tell."
                 if not settled and gap.n > 1 else ".")
    close = [f for f in others if not paired(rows[f]["test_accuracy"],
                                             chosen["test_accuracy"]).excludes_zero]
    if close and seeds > 1:
        which = ("Every other family is" if len(close) == len(others)
                 else f"{', '.join(map(str, close))} {'is' if len(close) == 1 else 'are'}")
        text += (f" {which} within the seed noise of {best}; more seeds (--seeds) would tell "
                 "them apart if anything does.")
    return text


def _mark(study: optuna.Study, number: Any) -> str:
    """" (recipe adamw)" when trial `number` of `study` ran a standard recipe, else ""."""
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return recipe_mark(found[0]) if found else ""


def _sureness(gap: Interval) -> str:
    if gap.n < 2:
        return "one seed gives no interval, so how sure this is is unknown (use --seeds 3)"
    if gap.excludes_zero:
        return "larger than the seed noise"
    return "within noise"


def _from_validation(study: optuna.Study, by: str,
                     families: Mapping[Any, Sequence[FrozenTrial]],
                     value: Callable[[FrozenTrial], float], metric: str, maximize: bool) -> str:
    bests = {f: b for f, ts in families.items() if (b := family_best(ts, value, maximize))}
    if not bests:
        return ""
    pick = max if maximize else min
    best = pick(bests, key=lambda f: value(bests[f]))
    trial = bests[best]
    text = (f"Verdict ({by}, on validation only): {best} looks best, as in trial "
            f"{trial.number}{recipe_mark(trial)} [{_config(trial.params)}], with {metric} "
            f"{value(trial):.4f}.")
    baseline = BASELINE.get(by)
    if baseline in bests and baseline != best:
        gap = value(trial) - value(bests[baseline])
        text += (f" {baseline}'s best reached {value(bests[baseline]):.4f} "
                 f"({100 * gap:+.1f} points).")
    elif baseline == best:
        text += " That is the baseline itself."
    else:
        text += f" No {baseline} trial completed, so there is no margin over it."
    text += (" This is one best-of-search value per family on the data the search chose by, "
             "so how much of the difference is noise is unknown: refit each family's best and "
             f"test it with python -m search.refit --study {study.study_name} --per-family "
             f"{by} --seeds 3.")
    return text
