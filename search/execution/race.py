"""Running the race of the finalists (search.study.race says what it is and how it decides).

The race's runs live in a sibling Optuna study in the same storage, `<study>.race@<budget>`, so
they never feed the search's sampler or pruner. The process that ran or launched the search
prepares it once the search's budget is finished: it picks the finalists and queues every run,
round by round (Optuna's `enqueue_trial`, with the finalist, round and resampling as the run's
user attributes). The runs then go through the same machinery as trials (search.execution
.session's `Search`, running queued trials only), on the same workers and GPUs: a launcher
starts its workers again, and each takes queued runs until none is left. A run of a finalist
the leader already beats beyond the noise is not trained: it ends PRUNED as `eliminated`.

Each run trains its configuration with its round's seed on its round's resampling of train +
validation (objectives.data.Task.resampled; the test split is never read), and is tracked in
MLflow like a trial, under the race's run, itself nested under the study's run, with the tags
`search.race` (the finalist), `search.race.round` and `search.race.resampling`.

An interrupted race resumes: its queued runs wait in the storage, an interrupted run is
retried from its checkpoint. Once no run is left, the decision is stored with the study (the
study attribute `race`, read by search.report and search.refit) and with the race's run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.core import names
from search.core.errors import UsageError, first_line
from search.core.urls import mask_text, mask_url
from search.study import race as plan
from search.study.optuna_study import FINISHED

if TYPE_CHECKING:
    import spaces
    from objectives.data import Task
    from search.execution.session import Search

FINALISTS = "finalists"  # the race study's attributes: its finalists, as Finalist records
RESAMPLINGS = "resamplings"
RUNS = "runs"  # the runs queued when it was prepared
ELIMINATE_CONFIDENCE = 0.90  # dropping a finalist costs less than a wrong answer: it only
# decides which searched configuration meets the recipe, and the recipe is never dropped


def race_name(study_name: str, budget: int) -> str:
    """The race's study: one per budget, so that a search extended later races again."""
    return f"{study_name}.race@{budget}"


def wanted(search: Search, size: plan.RaceSize | None) -> str | None:
    """Why this search has no race (a line for its user), or None when it has one."""
    if size is None:
        return "no race (--race none): the best trial is the answer"
    if len(search.metrics) > 1:
        return ("no race: a multi-objective study has no single best to race (search.report "
                "shows its Pareto front)")
    return None


def find(search: Search) -> optuna.Study | None:
    """This search's race study, if it was prepared."""
    try:
        return optuna.load_study(study_name=race_name(search.study.study_name, search.budget),
                                 storage=search.study._storage, **_queued_only(search))
    except KeyError:
        return None


def _queued_only(search: Search) -> dict[str, Any]:
    """Every run is queued with all its parameters: nothing is sampled, nothing pruned."""
    return {"sampler": optuna.samplers.RandomSampler(seed=search.seed),
            "pruner": optuna.pruners.NopPruner()}


def prepare(search: Search, size: plan.RaceSize) -> tuple[optuna.Study | None, str | None]:
    """The race study of a finished search, made and filled with its queued runs when it does
    not exist yet; (None, why) when there is nothing to race."""
    found = find(search)
    if found is not None:
        return found, None
    maximize = search.study.direction == StudyDirection.MAXIMIZE
    chosen = plan.finalists(search.study.get_trials(deepcopy=False), size.finalists,
                            maximize=maximize)
    if len(chosen) < 2:
        return None, ("no race: fewer than two configurations finished, nothing to compare "
                      "(the best trial is the answer)")
    name = race_name(search.study.study_name, search.budget)
    try:
        race = optuna.create_study(
            study_name=name, storage=search.study._storage,
            direction=search.study.direction, **_queued_only(search))
    except optuna.exceptions.DuplicatedStudyError:  # another node prepared it meanwhile
        return find(search), None
    race.set_user_attr(RESAMPLINGS, size.resamplings)
    race.set_user_attr(FINALISTS, [asdict(f) for f in chosen])
    for round_ in range(1, size.resamplings + 1):
        seed = plan.resampling_seed(search.seed, round_)
        for finalist in chosen:
            attrs: dict[str, Any] = {names.RACE_FINALIST: finalist.label,
                                     names.RACE_ROUND: round_, names.RACE_RESAMPLING: seed}
            if finalist.recipe is not None:
                attrs[names.RECIPE] = finalist.recipe
            race.enqueue_trial(finalist.params, user_attrs=attrs)
    race.set_user_attr(RUNS, len(chosen) * size.resamplings)
    search.study.set_user_attr(names.RACE_STUDY, name)
    return race, None


def stored_finalists(race: optuna.Study) -> list[plan.Finalist]:
    return [plan.Finalist(**f) for f in race.user_attrs.get(FINALISTS, [])]


class Rounds:
    """What makes a queued run a race run: it is admitted unless its finalist is out, and it
    trains on its round's resampling with its round's seed (search.execution.trial's variant)."""

    def __init__(self, race: optuna.Study) -> None:
        self.race = race
        self.maximize = race.direction == StudyDirection.MAXIMIZE
        self.incumbent = next((f.label for f in stored_finalists(race) if f.recipe), None)
        self._tasks: dict[tuple[int, int], Task] = {}

    def admit(self, trial: optuna.Trial) -> None:
        finalist = trial.user_attrs.get(names.RACE_FINALIST)
        if finalist is None:  # cannot happen: the race runs queued trials only
            raise optuna.TrialPruned("not a race run")
        trials = self.race.get_trials(deepcopy=False)
        out = set(dropped(trials))
        scores = scores_by_round(trials)
        out |= plan.to_drop(scores, out=out, incumbent=self.incumbent,
                            maximize=self.maximize, confidence=ELIMINATE_CONFIDENCE)
        if finalist in out:
            trial.set_user_attr(names.FAIL_REASON, names.ELIMINATED)
            raise optuna.TrialPruned(names.ELIMINATED)

    def vary(self, trial: FrozenTrial, task: Task,
             settings: spaces.Settings) -> tuple[Task, spaces.Settings, dict[str, str]]:
        seed = int(trial.user_attrs[names.RACE_RESAMPLING])
        key = (id(task), seed)
        if key not in self._tasks:
            self._tasks[key] = task.resampled(seed)
        tags = {tag: str(trial.user_attrs[attr]) for attr, tag in names.RACE_TAGS.items()}
        return self._tasks[key], dataclasses.replace(settings, seed=seed), tags


def scores_by_round(trials: list[FrozenTrial]) -> dict[str, dict[int, float]]:
    """Each finalist's validation score by round, from the race's completed runs."""
    scores: dict[str, dict[int, float]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and names.RACE_FINALIST in t.user_attrs:
            scores.setdefault(str(t.user_attrs[names.RACE_FINALIST]), {})[
                int(t.user_attrs[names.RACE_ROUND])] = float(t.values[0])
    return scores


def dropped(trials: list[FrozenTrial]) -> dict[str, int]:
    """Finalists out of the race, with the first round they were not run."""
    out: dict[str, int] = {}
    for t in trials:
        if t.user_attrs.get(names.FAIL_REASON) == names.ELIMINATED:
            label, round_ = str(t.user_attrs[names.RACE_FINALIST]), int(
                t.user_attrs[names.RACE_ROUND])
            out[label] = min(round_, out.get(label, round_))
    return out


def epochs_trained(trials: list[FrozenTrial], epochs: int) -> int:
    """Epochs the trials trained: a completed one all of them, a pruned or failed one as far
    as it reported (a run eliminated before it started: none)."""
    total = 0
    for t in trials:
        if t.state == TrialState.COMPLETE:
            total += epochs
        elif t.state in (TrialState.PRUNED, TrialState.FAIL) and t.intermediate_values:
            total += max(t.intermediate_values)
    return total


def pending(race: optuna.Study) -> bool:
    """Whether the race still has runs to train (queued or running)."""
    return bool(race.get_trials(deepcopy=False, states=(TrialState.WAITING,
                                                        TrialState.RUNNING)))


def decide(search: Search, race: optuna.Study) -> plan.Result:
    trials = race.get_trials(deepcopy=False)
    chosen = stored_finalists(race)
    scores = scores_by_round(trials)
    out = dropped(trials)
    resamplings = int(race.user_attrs.get(RESAMPLINGS, 0))
    return plan.decide(chosen, scores, dropped=out, resamplings=resamplings,
                       maximize=race.direction == StudyDirection.MAXIMIZE,
                       metric=search.metrics[0], study=race.study_name,
                       epochs=epochs_trained(trials, search.epochs))


def record(search: Search, result: plan.Result) -> None:
    """Store the decision with the study, and tag the study's run with it."""
    search.study.set_user_attr(names.RACE, result.to_json())
    search.run_tags.update(tags(result))


def tags(result: plan.Result) -> dict[str, str]:
    found = {"search.race.decision": result.decision or "none",
             "search.race.statement": result.statement[:500]}
    pick = result.entry(result.pick)
    if pick is not None:
        found.update({"search.race.pick": pick.label,
                      "search.race.pick_trial": str(pick.trial)})
        if pick.mean is not None:
            found["search.race.pick_mean"] = f"{pick.mean:.6g}"
            found["search.race.pick_interval"] = f"{pick.low:.6g} to {pick.high:.6g}"
    return found


def open_race(search: Search, race: optuna.Study, *, owner: bool) -> Search:
    """The race as a Search of its own: queued runs only, tracked under the race's run (made
    by the first process to open it, nested under the study's run)."""
    from search.execution.session import Search
    from search.tracking import Tracker

    stores = search.stores
    try:
        tracker = Tracker(tracking_uri=stores.client_uri, experiment=search.study.study_name,
                          artifact_location=stores.artifact_location,
                          log_dir=stores.log_dir / race.study_name if stores.log_dir else None)
    except Exception as e:  # any store or server error, as one line
        reason = mask_text(first_line(e), stores.tracking_uri)
        raise UsageError(f"cannot open tracking store {mask_url(stores.tracking_uri)!r}: "
                         f"{reason}") from None
    run_tags = {"mlflow.parentRunId": search.parent_run_id, "search.role": "race",
                "optuna.study_name": race.study_name}
    parent = tracker.study_run(
        run_id=race.user_attrs.get(names.MLFLOW_PARENT_RUN_ID), name=f"{race.study_name}",
        params={"finalists": ", ".join(f.label for f in stored_finalists(race)),
                "resamplings": race.user_attrs.get(RESAMPLINGS)},
        tags=run_tags)
    race.set_user_attr(names.MLFLOW_PARENT_RUN_ID, parent)
    opened = Search(spec=search.spec, study=race, stores=stores, tracker=tracker,
                    parent_run_id=parent, budget=int(race.user_attrs.get(RUNS, 0)),
                    settings=search.settings, options=search.options, device=search.device,
                    compile=search.compile, run_tags=run_tags, owner=owner,
                    metrics=search.metrics, checkpoint_seconds=search.checkpoint_seconds,
                    teacher=search.teacher, grid=True, variant=Rounds(race))
    opened.fail_lost_trials()  # a race killed earlier on this host left them RUNNING
    return opened


class RaceDisplay:
    """An Optuna callback: one line per finished race run."""

    def __init__(self, console: Any, metric: str) -> None:
        self.console, self.metric = console, metric

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED and trial.state != TrialState.FAIL:
            return
        label = trial.user_attrs.get(names.RACE_FINALIST, "?")
        round_ = trial.user_attrs.get(names.RACE_ROUND, "?")
        if trial.state == TrialState.COMPLETE:
            outcome = f"{self.metric}={trial.values[0]:.4f}"
        else:
            outcome = str(trial.user_attrs.get(names.FAIL_REASON, trial.state.name.lower()))
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.console.print(f"race round {round_}: {label:<14} {outcome}  {seconds:.1f}s",
                           markup=False, highlight=False, soft_wrap=True)
