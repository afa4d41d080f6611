"""A study's MLflow runs rebuilt from its Optuna record: the parent run found or made, a run
for every finished trial that has none, RUNNING runs of finished trials ended. A search runs
`sync_study` as it ends; `python -m search.sync` (search.sync) is the command."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from search.core import names
from search.tracking.tracker import MAX_PARAM_LENGTH

ENDED_BY = "search.sync"  # the search.ended_by tag of a run this ended
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
NO_ARTIFACTS = ("not available: this run was rebuilt by search.sync from Optuna's storage, "
                "which holds no artifacts (config, confusion matrix, model) or epoch timings")
TrackingStoreError = MlflowException  # what the tracking store raises, for the command
TrackingClient = MlflowClient  # the client's type, for callers outside search.tracking


def tracking_client(client_uri: str) -> MlflowClient:
    return MlflowClient(client_uri)


@dataclass
class SyncReport:
    study: str
    finished: int = 0  # finished trials (COMPLETE, PRUNED, FAIL) of the study
    rebuilt: list[int] = field(default_factory=list)  # trials whose run was created
    ended: list[int] = field(default_factory=list)  # trials whose RUNNING run was ended
    moved: list[int] = field(default_factory=list)  # trials whose run was put under the parent
    missing: int = 0  # finished trials still without a run (finished within settle_seconds)
    settle_seconds: float = 0.0
    lost: list[int] = field(default_factory=list)  # trials failed as "worker lost" (the CLI)
    parent_rebuilt: bool = False  # (the CLI)
    warnings: list[str] = field(default_factory=list)
    race: SyncReport | None = None  # the study's race, synced after it (the CLI)

    def line(self) -> str:
        """One line that says what the sync did, e.g. "study 'digits': 20 finished trials;
        3 runs rebuilt, 1 run ended, parent run rebuilt"."""
        return (f"study {self.study!r}: {_count(self.finished, 'finished trial')}; "
                f"{self.changes() or 'nothing to do'}")

    def changes(self) -> str:
        """What the sync changed, e.g. "3 runs rebuilt, 1 run ended"; empty if nothing."""
        parts = [f"{_count(len(self.lost), 'lost trial')} failed"] if self.lost else []
        parts += [f"{_count(len(v), 'run')} {what}" for v, what in (
            (self.rebuilt, "rebuilt"), (self.ended, "ended"),
            (self.moved, "moved under the parent run")) if v]
        parts += ["parent run rebuilt"] if self.parent_rebuilt else []
        if self.missing:
            parts.append(f"{_count(self.missing, 'trial')} finished less than "
                         f"{self.settle_seconds:g} s ago left for the next sync")
        return ", ".join(parts)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"



def find_parent(study: optuna.Study, client: MlflowClient, experiment_id: str, *,
                metrics: Sequence[str], tags: dict[str, str],
                role: str = "study") -> tuple[str, bool]:
    """The study's parent run, rebuilt if gone; (its id, whether it was rebuilt).

    In order: the run in the study's `mlflow_parent_run_id` if still active, else the oldest
    active run tagged as the study's, else a new one; its id is stored back in the study.
    `role`: "race" for a race's study (search.execution.race), whose run is the parent of its
    runs and is nested under the study's run (`tags` then name that run's parent).
    """
    stored, name = study.user_attrs.get(names.MLFLOW_PARENT_RUN_ID), study.study_name
    run = _get_run(client, stored, experiment_id) if stored else None
    if run is None:
        found = sorted((r for r in _search(client, experiment_id,
                                           f"tags.`search.role` = '{role}'")
                        if r.data.tags.get("optuna.study_name") == name),
                       key=lambda r: (r.info.start_time, r.info.run_id))
        run = found[0] if found else None
    rebuilt = run is None
    if run is None:
        attrs = study.user_attrs
        params = {"study": attrs.get("space", name), "metric": ",".join(metrics),
                  "direction": ",".join(d.name.lower() for d in study.directions),
                  **{k: attrs[k] for k in ("epochs", "seed", "backbone", "resolution", "init",
                                           "teacher") if attrs.get(k) is not None}}
        run = client.create_run(experiment_id, run_name=name, tags={
            "search.role": role, "optuna.study_name": name, "search.backfilled": "true",
            **({"search.budget": str(attrs[names.BUDGET])} if names.BUDGET in attrs else {}),
            **tags})
        _log(client, run.info.run_id, params=params)
    if run.info.run_id != stored:
        study.set_user_attr(names.MLFLOW_PARENT_RUN_ID, run.info.run_id)
    return run.info.run_id, rebuilt


def end_parent(study: optuna.Study, client: MlflowClient, run_id: str) -> None:
    """End a rebuilt parent run FINISHED with its trial counts (and best value); left RUNNING
    while a trial runs."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return
    counts = {f"trials_{s.name.lower()}": float(sum(t.state == s for t in trials))
              for s in {t.state for t in trials}}
    if len(study.directions) == 1 and any(t.state == TrialState.COMPLETE for t in trials):
        counts["best_value"] = float(study.best_value)  # as a search's own summary
    _log(client, run_id, metrics=[Metric(k, v, _ms(datetime.now()), 0)
                                  for k, v in counts.items()])
    client.set_terminated(run_id, status="FINISHED")


def sync_study(study: optuna.Study, client: MlflowClient, *, experiment_id: str,
               parent_run_id: str, metrics: tuple[str, ...], settle_seconds: float = 0.0,
               fresh: Collection[int] = ()) -> SyncReport:
    """Give every finished trial of `study` one ended run under `parent_run_id`.

    `metrics` names the trials' values (the study's objective metrics, as search.run reports
    them); the first is the per-epoch metric. Trials that finished less than `settle_seconds`
    ago are skipped (their live writer may be behind), except those numbered in `fresh`.
    """
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=FINISHED)
              # over budget: never ran, nothing to track
              if t.user_attrs.get(names.FAIL_REASON) not in names.NEVER_RAN}
    now = datetime.now()
    runs: dict[int, list[Run]] = {}
    for run in _search(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_run_id}'"):
        tag = run.data.tags.get("optuna.trial_number", "")
        if tag.isdigit():
            runs.setdefault(int(tag), []).append(run)
    report = SyncReport(study.study_name, finished=len(trials), settle_seconds=settle_seconds)
    retries = {t.system_attrs[names.RETRY_HISTORY][-1]: t.number  # retried trial -> its retry
               for t in study.get_trials(deepcopy=False)
               if t.system_attrs.get(names.RETRY_HISTORY)}
    for number, trial in sorted(trials.items()):
        done = trial.datetime_complete
        if (number not in fresh and done is not None
                and (now - done).total_seconds() < settle_seconds):
            report.missing += number not in runs
            continue
        if number not in runs:  # a run made under another parent, by the trial's writer
            linked = _get_run(client, trial.user_attrs.get(names.MLFLOW_RUN_ID), experiment_id)
            if linked is not None and linked.data.tags.get("optuna.trial_number") == str(number):
                client.set_tag(linked.info.run_id, "mlflow.parentRunId", parent_run_id)
                runs[number] = [linked]
                report.moved.append(number)
        if number not in runs:
            _rebuild(client, study.study_name, trial, experiment_id, parent_run_id, metrics,
                     retries)
            report.rebuilt.append(number)
            continue
        for run in runs[number]:
            if run.info.status == "RUNNING":
                _complete(client, run, trial, metrics, retries)
                report.ended.append(number)
    return report


def _rebuild(client: MlflowClient, name: str, trial: FrozenTrial, experiment_id: str,
             parent: str, metrics: tuple[str, ...], retries: dict[int, int]) -> None:
    """The run of a trial that has none: as its live writer made it, less what Optuna lacks."""
    tags = {"mlflow.parentRunId": parent, "optuna.trial_number": str(trial.number),
            "optuna.study_name": name,
            **_state_tags(trial, retries), "search.backfilled": "true",
            "search.tracking.artifacts": NO_ARTIFACTS}
    first = names.retry_of(trial)
    if first is not None:
        tags["search.retry_of_trial"] = str(first)
    if trial.user_attrs.get(names.RECIPE):
        tags["search.recipe"] = str(trial.user_attrs[names.RECIPE])
    for attr, tag in names.RACE_TAGS.items():  # a race's run: its finalist, round and resampling
        if trial.user_attrs.get(attr) is not None:
            tags[tag] = str(trial.user_attrs[attr])
    run_id = client.create_run(experiment_id, start_time=_ms(trial.datetime_start),
                               tags=tags, run_name=f"trial-{trial.number}").info.run_id
    epochs = [Metric(metrics[0], float(v), _ms(trial.datetime_complete), int(step))
              for step, v in sorted(trial.intermediate_values.items())]
    _log(client, run_id, params=trial.params, metrics=epochs + _final(trial, metrics))
    client.set_terminated(run_id, status=_status(trial), end_time=_ms(trial.datetime_complete))


def _complete(client: MlflowClient, run: Run, trial: FrozenTrial,
              metrics: tuple[str, ...], retries: dict[int, int]) -> None:
    """End a run its writer left RUNNING, with what Optuna has that the run lacks: the
    parameters, the per-epoch objective values, the final values and the state."""
    run_id = run.info.run_id
    logged = {m.step for m in client.get_metric_history(run_id, metrics[0])}
    epochs = [Metric(metrics[0], float(v), _ms(trial.datetime_complete), int(step))
              for step, v in sorted(trial.intermediate_values.items()) if int(step) not in logged]
    final = [m for m in _final(trial, metrics) if m.key not in run.data.metrics]
    _log(client, run_id,
         params={k: v for k, v in trial.params.items() if k not in run.data.params},
         metrics=epochs + final, tags={**_state_tags(trial, retries), "search.ended_by": ENDED_BY})
    client.set_terminated(run_id, status=_status(trial), end_time=_ms(trial.datetime_complete))


def _state_tags(trial: FrozenTrial, retries: dict[int, int]) -> dict[str, str]:
    tags = {"optuna.state": trial.state.name}
    if trial.number in retries:  # as search.tracking.end_lost_run links a lost trial
        tags["search.retried_by_trial"] = str(retries[trial.number])
    if trial.state == TrialState.FAIL:
        tags["optuna.fail_reason"] = str(trial.user_attrs.get(names.FAIL_REASON) or "unknown")
    if trial.state == TrialState.PRUNED and trial.user_attrs.get(names.PRUNED_EPOCH) is not None:
        tags["optuna.pruned_epoch"] = str(trial.user_attrs[names.PRUNED_EPOCH])
    return tags


def _status(trial: FrozenTrial) -> str:
    if trial.state != TrialState.FAIL:
        return "FINISHED"
    interrupted = trial.user_attrs.get(names.FAIL_REASON) == names.INTERRUPTED
    return "KILLED" if interrupted else "FAILED"


def _final(trial: FrozenTrial, metrics: tuple[str, ...]) -> list[Metric]:
    """final_<metric> of a COMPLETE trial's values, as its live writer logs them."""
    if trial.state != TrialState.COMPLETE or trial.values is None:
        return []
    return [Metric(f"final_{m}", float(v), _ms(trial.datetime_complete), 0)
            for m, v in zip(metrics, trial.values, strict=True)]


def _log(client: MlflowClient, run_id: str, *, params: dict[str, Any] | None = None,
         metrics: Sequence[Metric] = (), tags: dict[str, str] | None = None) -> None:
    """log_batch within MLflow's limits: 100 params or tags, 1000 metrics a call."""
    items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in (params or {}).items()]
    labels = [RunTag(k, v) for k, v in (tags or {}).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    for i in range(0, len(labels), 100):
        client.log_batch(run_id, tags=labels[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=list(metrics[i : i + 1000]))


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run of the experiment that matches, page by page."""
    page = client.search_runs([experiment_id], filter_string, max_results=1000)
    found = list(page)
    while page.token:
        page = client.search_runs([experiment_id], filter_string, max_results=1000,
                                  page_token=page.token)
        found.extend(page)
    return found


def _get_run(client: MlflowClient, run_id: str | None, experiment_id: str) -> Run | None:
    """The run if it exists, is active and belongs to the experiment; else None."""
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    ok = run.info.lifecycle_stage == "active" and run.info.experiment_id == experiment_id
    return run if ok else None


def _ms(when: datetime | None) -> int:
    return int((when or datetime.now()).timestamp() * 1000)


def note_warning(warnings: list[str], warning: str | None) -> None:
    if warning is not None:
        warnings.append(warning)

