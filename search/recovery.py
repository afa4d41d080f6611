"""No trial lost: a lost or interrupted trial is failed with its reason and retried, and the
retry resumes from the trial's last per-epoch checkpoint.

Optuna's heartbeat finds trials whose worker stopped beating, on RDB storages only; the journal
(file or Redis) has none. So a trial also records which worker runs it (host and process id),
and a launcher that sees its worker die, or a search that starts on the same host, fails that
worker's RUNNING trials itself. Either way Optuna's `RetryFailedTrialCallback` adds the retry,
with the lost trial's parameters and intermediate values.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

WORKER = "worker"  # user attribute: "host:pid" of the process running the trial
MAX_RETRY = 3  # retries of one trial; a trial that kills its worker every time stops there
LOST = "worker lost"
INTERRUPTED = "interrupted"

OnLost = Callable[[FrozenTrial, str], None]  # (the failed trial, reason): end its MLflow run


def worker_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a retry of `trial` (same parameters and intermediate values, WAITING)."""
    RetryFailedTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)(study, trial)


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A live trial as the storage holds it now (its system attributes included)."""
    return trial.study._storage.get_trial(trial._trial_id)


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (the first of the chain), or None."""
    first = trial.system_attrs.get("failed_trial")
    return int(first) if first is not None else None


def checkpoint_path(folder: Path, study_name: str, trial: FrozenTrial) -> Path:
    """Where a trial's per-epoch checkpoint lives: shared by every retry of one trial."""
    first = retry_of(trial)
    return folder / study_name / f"trial-{trial.number if first is None else first}.pt"


def local_worker_dead(worker: str) -> bool:
    """Whether `worker` ("host:pid") ran on this host and its process no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def fail_lost_trials(study: optuna.Study, *, lost: Callable[[str], bool],
                     on_lost: OnLost | None = None, reason: str = LOST) -> list[int]:
    """Fail the RUNNING trials whose worker is `lost`, with `reason`, and queue their retries.

    Returns the numbers of the trials it failed. Safe against another process doing the same:
    a trial already finished elsewhere is left alone.
    """
    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER)
        if not worker or not lost(worker):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        frozen = storage.get_trial(trial._trial_id)
        if on_lost is not None:
            on_lost(frozen, reason)
        retry(study, frozen)
        failed.append(trial.number)
    return failed


def stale_trial_callback(on_lost: Callable[[], OnLost | None]) -> Callable[
        [optuna.Study, FrozenTrial], None]:
    """The heartbeat's callback: end the stale trial's MLflow run, then queue its retry.

    `on_lost` is looked up when the callback runs: the storage (which holds the callback) is
    opened before the MLflow tracker exists.
    """
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        handler = on_lost()
        if handler is not None:
            handler(trial, f"{LOST} (no heartbeat)")
        retry(study, trial)

    return callback
