"""No trial lost: a lost or interrupted trial is failed with its reason and retried, and the
retry resumes from the trial's last per-epoch checkpoint.

Optuna's heartbeat finds trials whose worker stopped beating, from any node (on an RDB by
Optuna, on the journal by search.storage.heartbeat). Sooner than that, a trial records which
worker runs it (node and process id), and a launcher that sees its worker die, or a search that
starts on the same node, fails that worker's RUNNING trials itself. Either way Optuna's
`RetryHeartbeatStaleTrialCallback` adds the retry, with the lost trial's parameters and
intermediate values.
"""

from __future__ import annotations

import copy
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from objectives.interrupts import interrupts_held
from search.core import names
from search.core.names import INTERRUPTED, LOST, WORKER, retry_of  # noqa: F401 (re-exported)

NODE_ENV = "FINETUNE_SEARCH_NODE"
MAX_RETRY = 3  # retries of one trial; a trial that kills its worker every time stops there

# (the failed trial, the reason, the number of its retry or None): end its MLflow run
OnLost = Callable[[FrozenTrial, str, "int | None"], None]


def node() -> str:
    """This node's name in worker ids: $FINETUNE_SEARCH_NODE, or else the host name (set it
    where nodes share a host name, as containers on one host may)."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


def worker_id(pid: int | None = None) -> str:
    return f"{node()}:{pid or os.getpid()}"


def retry(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Queue a retry of `trial` (same parameters and intermediate values, WAITING); returns
    its number, or None when the trial has had its MAX_RETRY retries."""
    with warnings.catch_warnings():  # experimental since Optuna 2.8, and the one not deprecated
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY,
                                                    inherit_intermediate_values=True)
    # The retry does not name the lost trial's worker. Between a worker taking the retry
    # (RUNNING) and recording itself (claim_at_birth), another process starting on this host
    # (`fail_lost_trials` with `local_worker_dead`) would find a RUNNING trial of a dead worker
    # and fail it as lost: a resumed search lost a retry that way.
    unowned = copy.copy(trial)
    unowned.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != WORKER}
    callback(study, unowned)
    for queued in reversed(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
        if queued.system_attrs.get(names.RETRY_HISTORY, [])[-1:] == [trial.number]:
            return queued.number
    return None


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A live trial as the storage holds it now (its system attributes included)."""
    return trial.study._storage.get_trial(trial._trial_id)


def checkpoint_path(folder: Path, study_name: str, trial: FrozenTrial) -> Path:
    """Where a trial's per-epoch checkpoint lives: shared by every retry of one trial."""
    first = retry_of(trial)
    return folder / study_name / f"trial-{trial.number if first is None else first}.pt"


def local_worker_dead(worker: str) -> bool:
    """Whether `worker` ("host:pid") ran on this host and its process no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != node() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def claim_at_birth(study: optuna.Study) -> None:
    """Make every trial this process asks for its own from the moment Optuna creates it.

    Optuna's optimize loop creates the trial, RUNNING, in `ask`, then calls the objective, which
    records the worker. An interrupt (Ctrl-C, SIGTERM) landing between the two left a RUNNING
    trial that nobody owned. Interrupts wait while `ask` runs and the worker is recorded, and
    are delivered right after; `fail_own_trials` then finds the trial. Written here because
    Optuna has no hook between creating a trial and running it.
    """
    if getattr(study, "_claims_at_birth", False):
        return
    ask = study.ask

    def ask_and_claim(fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        with interrupts_held():
            trial = ask(fixed_distributions)
            trial.set_user_attr(WORKER, worker_id())
        return trial

    study.ask = ask_and_claim  # type: ignore[method-assign]
    study._claims_at_birth = True  # type: ignore[attr-defined]


def fail_own_trials(study: optuna.Study, *, on_lost: OnLost | None = None) -> list[int]:
    """Fail, as interrupted, the trials this process leaves RUNNING as it stops (an interrupt
    between Optuna's steps and the objective's own), and queue their retries."""
    return fail_lost_trials(study, lost=worker_id().__eq__, on_lost=on_lost, reason=INTERRUPTED)


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
            storage.set_trial_user_attr(trial._trial_id, names.FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        frozen = storage.get_trial(trial._trial_id)
        again = retry(study, frozen)
        if on_lost is not None:
            on_lost(frozen, reason, again)
        failed.append(trial.number)
    return failed


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's callback, retry) the trials whose worker stopped
    beating, as Optuna does before each trial it starts; nothing without a heartbeat."""
    with warnings.catch_warnings():  # experimental since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def stale_trial_callback(on_lost: Callable[[], OnLost | None]) -> Callable[
        [optuna.Study, FrozenTrial], None]:
    """The heartbeat's callback: end the stale trial's MLflow run, then queue its retry.

    `on_lost` is looked up when the callback runs: the storage (which holds the callback) is
    opened before the MLflow tracker exists.
    """
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        again = retry(study, trial)
        handler = on_lost()
        if handler is not None:
            reason = trial.user_attrs.get(names.FAIL_REASON) or f"{LOST} (no heartbeat)"
            handler(trial, str(reason), again)

    return callback
