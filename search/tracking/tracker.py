"""A search's runs: one experiment per study, one parent run per study, one child run per trial.

Runs are attached by id through MlflowClient (`mlflow.parentRunId`), never through the
process-global `mlflow.start_run` stack. The study-level calls (experiment, parent run) happen
here, once per search; every trial-level write goes to the writer process (`writer`), in
order, so a trial never waits on the tracking store. Per-epoch metrics are buffered, artifacts
staged, and each trial's run is finished with one batch and one artifact copy.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Experiment, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from search.core import names
from search.tracking.writer import Writer, create_run, log_artifacts

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

FLUSH_SECONDS = 5.0  # per-epoch metrics reach the store at least this often while a trial runs
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value

Artifact = str | bytes | Callable[[], str | bytes]  # a callable must pickle (a partial)

# MLflow 3's UI opens an experiment of no kind on its GenAI overview ("Traces 0"); one of this
# kind opens on its runs table ("Model training"). Key and value as MLflow's UI reads them
# (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def versions() -> dict[str, str]:
    import mlflow
    import optuna
    import torch

    # str(): torch.__version__ is a TorchVersion, whose pickle would make the writer process
    # import all of PyTorch (half a gigabyte) just to read a tag.
    return {
        "version.torch": str(torch.__version__),
        "version.optuna": str(optuna.__version__),
        "version.mlflow": str(mlflow.__version__),
        "version.python": platform.python_version(),
    }


class Tracker:
    def __init__(
        self, *, tracking_uri: str, experiment: str, artifact_location: str | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment, artifact_location)
        self.versions = versions()
        self.writer = Writer(tracking_uri, log_dir=log_dir)

    @property
    def errors(self) -> list[str]:
        return self.writer.errors

    @property
    def lost(self) -> str | None:
        """Why trial tracking stopped (the writer died more often than it is replaced)."""
        return self.writer.lost

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location,
                                                     tags=EXPERIMENT_KIND)
            except MlflowException:  # another worker created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        mark_kind(self.client, found)
        return found.experiment_id

    def flush(self) -> None:
        """Wait until every trial write sent so far is in the store."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    # -- the study's parent run -------------------------------------------------------------

    def study_run(self, *, run_id: str | None, name: str, params: dict[str, Any],
                  tags: dict[str, str]) -> str:
        """The study's parent run: `run_id` when it still exists (a resumed search), else new."""
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.client.update_run(run_id, status="RUNNING")
                self.client.log_batch(run_id, tags=_tags(tags))
                return run_id
        found = self._study_runs(name)
        if found:  # another node made it, before this one's study knew its id
            return found[0]
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={"search.role": "study", "optuna.study_name": name, **tags, **self.versions},
        )
        self.client.log_batch(run.info.run_id, params=_params(params))
        # Nodes that start together may each create one: the earliest stays, the rest go.
        winner = next(iter(self._study_runs(name)), run.info.run_id)
        if winner != run.info.run_id:
            self.client.delete_run(run.info.run_id)
        return winner

    def _study_runs(self, name: str) -> list[str]:
        """Ids of the study's active parent runs, oldest first."""
        found = [r for r in self.client.search_runs(
            [self.experiment_id], filter_string="tags.`search.role` = 'study'", max_results=100,
        ) if r.data.tags.get("optuna.study_name") == name]
        return [r.info.run_id for r in sorted(found, key=lambda r: (r.info.start_time,
                                                                   r.info.run_id))]

    def end_study_run(self, run_id: str, *, status: str, metrics: dict[str, float],
                      tags: dict[str, str]) -> None:
        self.flush()
        now = _now()
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=_tags(tags),
        )
        self.client.set_terminated(run_id, status=status)

    def end_lost_run(self, trial: FrozenTrial, reason: str, retry: int | None = None) -> None:
        """End the MLflow run of a trial whose worker was lost, if it is still RUNNING."""
        error = end_lost_run(self.client, self.experiment_id, trial, reason, retry)
        if error is not None:  # recorded, never raised: the retry matters more
            self.writer.errors.append(error)

    # -- trial runs -------------------------------------------------------------------------

    def trial_run(self, *, parent_run_id: str, trial_number: int, params: dict[str, Any],
                  tags: dict[str, str]) -> TrialRun:
        all_tags = {
            "mlflow.parentRunId": parent_run_id,
            "optuna.trial_number": str(trial_number),
            "optuna.state": "RUNNING",
            **self.versions,
            **tags,
        }
        key = self.writer.new_key()
        ticket = self.writer.send(f"create run of trial {trial_number}", create_run,
                                  self.experiment_id, f"trial-{trial_number}", all_tags,
                                  key=key, reply=True)
        assert ticket is not None
        self.writer.send("log params", _log_batch, key=key, params=_params(params))
        return TrialRun(self.writer, key, ticket)


class TrialRun:
    """One trial's child run: its methods return at once, the writer process does the work.

    Metrics are buffered and artifacts staged; `finish` writes them with the final state in one
    batch and one artifact copy, which is what keeps tracking cheap for short trials.
    """

    def __init__(self, writer: Writer, key: int, ticket: int) -> None:
        self.writer = writer
        self.key = key
        self._ticket = ticket
        self._run_id: str | None = None
        self._buffer: list[Metric] = []
        self._artifacts: dict[str, Artifact] = {}
        self._last_flush = time.monotonic()
        self.linked = False  # whether the Optuna trial holds this run's id

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (waits for the writer the first time; None if creation failed)."""
        if self._run_id is None:
            self._run_id = self.writer.result(self._ticket)
        return self._run_id

    @property
    def created(self) -> bool:
        """Whether the writer has created the run yet (never waits)."""
        return self._run_id is not None or self.writer.ready(self._ticket)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        now = _now()
        self._buffer.extend(Metric(k, float(v), now, epoch) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            batch, self._buffer = self._buffer, []
            self.writer.send("log metrics", _log_metrics, batch, key=self.key)
            self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run now (a state seen mid-trial, such as whether it runs compiled)."""
        self.writer.send("set tags", _log_metrics, [], _tags(tags), key=self.key)

    def add_artifact(self, path: str, content: Artifact) -> None:
        """Stage an artifact for `finish`; a callable is rendered by the writer process."""
        self._artifacts[path] = content

    def add_json(self, path: str, data: Any) -> None:
        self.add_artifact(path, json.dumps(data, indent=2, sort_keys=True, default=str))

    def finish(self, state: str, *, tags: dict[str, str] | None = None,
               metrics: dict[str, float] | None = None, killed: bool = False) -> None:
        """Record the trial's final state (COMPLETE, PRUNED or FAIL) and end the run.

        `killed` ends the run as KILLED (interrupted) rather than FAILED.
        """
        if metrics:
            now = _now()
            self._buffer.extend(Metric(k, float(v), now, 0) for k, v in metrics.items())
        status = "KILLED" if killed else {"COMPLETE": "FINISHED", "PRUNED": "FINISHED"}.get(
            state, "FAILED")
        # Three requests, each retried alone: a broken artifact must not leave the run RUNNING.
        self.writer.send(f"log the {state} trial's metrics", _log_metrics, self._buffer,
                         _tags({"optuna.state": state, **(tags or {})}), key=self.key)
        if self._artifacts:
            self.writer.send("log artifacts", _log_artifacts, self._artifacts, key=self.key)
        self.writer.send("end run", _end_run, status, key=self.key)
        self._buffer, self._artifacts = [], {}


def mark_kind(client: MlflowClient, experiment: Experiment) -> None:
    """Tag a study's experiment as model training, unless it already has a kind (one made
    before this tag, or by a sync); a kind someone chose in the UI is kept."""
    for key, value in EXPERIMENT_KIND.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def log_folder(tracking_uri: str, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log `folder`'s files under `artifact_path` in the existing run `run_id` (a run that is
    not there raises MLflow's clear "not found", not an artifact store's error)."""
    client = MlflowClient(tracking_uri)
    client.get_run(run_id)
    client.log_artifacts(run_id, str(folder), artifact_path)


def end_lost_run(client: MlflowClient, experiment_id: str | None, trial: FrozenTrial,
                 reason: str, retry: int | None = None) -> str | None:
    """End FAILED, with `reason`, the RUNNING run of a trial whose worker was lost, tagged with
    the number of its retry; returns what went wrong, if anything.

    The run is the one the trial holds the id of, or else (its worker died before Optuna held
    the id: the writer died with it) the RUNNING run of the experiment tagged with the trial's
    number.
    """
    number = str(trial.number)
    try:
        run_id = trial.user_attrs.get(names.MLFLOW_RUN_ID)
        # A retry starts with a copy of the lost trial's run id: only its own counts.
        runs = [client.get_run(run_id)] if run_id else []
        runs = [r for r in runs if r.data.tags.get("optuna.trial_number") == number]
        if not runs and experiment_id is not None:
            runs = list(client.search_runs(
                [experiment_id], max_results=10,
                filter_string=f"tags.`optuna.trial_number` = '{number}' and "
                              "attributes.status = 'RUNNING'"))
        for run in runs:
            if run.info.status != "RUNNING":
                continue
            tags = {"optuna.state": "FAIL", "optuna.fail_reason": reason}
            if retry is not None:
                tags["search.retried_by_trial"] = str(retry)
            client.log_batch(run.info.run_id, tags=_tags(tags))
            client.set_terminated(run.info.run_id, status="FAILED")
    except MlflowException as e:
        return f"MLflow: ending the run of lost trial {number} failed: {e}"
    return None


# -- what the writer process runs: fn(client, run_id, ...) ------------------------------------

def _log_batch(client: MlflowClient, run_id: str, **batch: Any) -> None:
    client.log_batch(run_id, **batch)


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric],
                 tags: Sequence[RunTag] = ()) -> None:
    # log_batch takes at most 1000 metrics per call.
    for i in range(0, max(len(metrics), 1), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000], tags=tags if i == 0 else ())


def _log_artifacts(client: MlflowClient, run_id: str, artifacts: dict[str, Artifact]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for path, content in artifacts.items():
            data = content() if callable(content) else content
            target = Path(tmp) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                target.write_text(data)
            else:
                target.write_bytes(data)
        log_artifacts(client, run_id, tmp)


def _end_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def _params(params: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]


def _tags(tags: dict[str, str]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in tags.items()]


def _now() -> int:
    return int(time.time() * 1000)
