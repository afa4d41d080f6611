"""MLflow tracking: one experiment per study, one parent run per study, one child run per trial.

Runs are attached by id through MlflowClient (`mlflow.parentRunId`), never through the
process-global `mlflow.start_run` stack. Everything but creating a run goes through one
background thread, in order, so a trial never waits on the tracking store: per-epoch metrics are
buffered and written in batches, artifacts are rendered and written after the trial moved on.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

log = logging.getLogger("search.tracking")

FLUSH_SECONDS = 5.0  # per-epoch metrics reach the store at least this often while a trial runs
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def versions() -> dict[str, str]:
    import mlflow
    import optuna
    import torch

    return {
        "version.torch": torch.__version__,
        "version.optuna": optuna.__version__,
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }


class Tracker:
    def __init__(
        self, *, tracking_uri: str, experiment: str, artifact_location: str | None = None
    ) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment, artifact_location)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.versions = versions()

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # another worker created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- the background queue -------------------------------------------------------------

    def submit(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run `fn` on the tracking thread; a failure is retried once, then recorded."""

        def call() -> None:
            for attempt in (1, 2):
                try:
                    fn(*args, **kwargs)
                    return
                except Exception as e:  # noqa: BLE001 - tracking must never kill a search
                    if attempt == 2:
                        message = f"MLflow: {what} failed: {type(e).__name__}: {e}"
                        self.errors.append(message)
                        log.warning(message)
                    else:
                        time.sleep(0.5)

        future = self._executor.submit(call)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(future)

    def flush(self) -> None:
        """Wait until everything queued so far (and anything it queued in turn) is written."""
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            for future in pending:
                future.result()

    def close(self) -> None:
        self.flush()
        self._executor.shutdown(wait=True)

    # -- runs -----------------------------------------------------------------------------

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
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={**tags, **self.versions}
        )
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def end_study_run(self, run_id: str, *, status: str, metrics: dict[str, float],
                      tags: dict[str, str]) -> None:
        self.flush()
        now = _now()
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=_tags(tags),
        )
        self.client.set_terminated(run_id, status=status)

    def trial_run(self, *, parent_run_id: str, trial_number: int, params: dict[str, Any],
                  tags: dict[str, str]) -> TrialRun:
        all_tags = {
            "mlflow.parentRunId": parent_run_id,
            "optuna.trial_number": str(trial_number),
            "optuna.state": "RUNNING",
            **self.versions,
            **tags,
        }
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{trial_number}", tags=all_tags
        )
        trial_run = TrialRun(self, run.info.run_id)
        self.submit("log params", self.client.log_batch, run.info.run_id, params=_params(params))
        return trial_run


Artifact = str | bytes | Callable[[], str | bytes]


class TrialRun:
    """One trial's child run: its methods return at once, the tracking thread does the work.

    Metrics are buffered and artifacts staged; `finish` writes them with the final state in one
    batch and one artifact copy, which is what keeps tracking cheap for short trials.
    """

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self._buffer: list[Metric] = []
        self._artifacts: dict[str, Artifact] = {}
        self._last_flush = time.monotonic()
        self.finished = False

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        now = _now()
        self._buffer.extend(Metric(k, float(v), now, epoch) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            batch, self._buffer = self._buffer, []
            self.tracker.submit("log metrics", _log_metrics, self.client, self.run_id, batch)
            self._last_flush = time.monotonic()

    def add_artifact(self, path: str, content: Artifact) -> None:
        """Stage an artifact for `finish`; a callable is rendered on the tracking thread."""
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
        self.tracker.submit(
            f"finish run {self.run_id}", _finish, self.client, self.run_id,
            metrics=self._buffer, tags=_tags({"optuna.state": state, **(tags or {})}),
            artifacts=self._artifacts, status=status,
        )
        self._buffer, self._artifacts = [], {}
        self.finished = True


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric],
                 tags: Sequence[RunTag] = ()) -> None:
    # log_batch takes at most 1000 metrics per call.
    for i in range(0, max(len(metrics), 1), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000], tags=tags if i == 0 else ())


def _finish(client: MlflowClient, run_id: str, *, metrics: list[Metric], tags: list[RunTag],
            artifacts: dict[str, Artifact], status: str) -> None:
    _log_metrics(client, run_id, metrics, tags)
    if artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            for path, content in artifacts.items():
                data = content() if callable(content) else content
                target = Path(tmp) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, str):
                    target.write_text(data)
                else:
                    target.write_bytes(data)
            client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, status=status)


def _params(params: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]


def _tags(tags: dict[str, str]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in tags.items()]


def _now() -> int:
    return int(time.time() * 1000)
