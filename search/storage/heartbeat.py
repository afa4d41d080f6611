"""Optuna's heartbeat on the journal storages (a file, Redis), which Optuna gives to RDBs only.

A node that dies whole (its launcher, workers and writers at once) leaves its trials RUNNING,
and no process on that node is left to see it. On an RDB, Optuna's heartbeat lets any other
worker find such a trial: a thread beats for each running trial, and before starting a trial
a worker fails the trials whose last beat is older than the grace period, then calls the
storage's stale-trial callback (which queues the retry). That protocol is Optuna's
`BaseHeartbeat`: implementing it on `JournalStorage` is all it takes for Optuna's own
`optimize` loop to beat and recover on the journal too. Written here because Optuna's journal
storage does not implement it (its log has no place for it; a system attribute does).

A beat is the beating node's wall-clock time in the trial's system attribute `heartbeat`, so
the nodes' clocks must agree to well within the grace period (NTP does).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial, TrialState

from search.core import names

BEAT = "heartbeat"  # trial system attribute: the time of the last beat (seconds since epoch)
LOST = "worker lost (no heartbeat)"

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat: `heartbeat` seconds between beats; a trial
    silent for `grace` seconds (default twice that) is stale."""

    def __init__(self, backend: BaseJournalBackend, *, heartbeat: int,
                 grace: float | None = None, on_stale: StaleCallback | None = None) -> None:
        super().__init__(backend)
        self._heartbeat = heartbeat
        self._grace = grace if grace is not None else 2.0 * heartbeat
        self._on_stale = on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, BEAT, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker found it stale and failed it: its retry runs instead

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # Since its last beat, or since it started: a trial that has not beaten yet, or a
            # retry, which starts with a copy of the lost trial's system attributes.
            start = trial.datetime_start
            last = max(float(trial.system_attrs.get(BEAT, 0.0)),
                       start.timestamp() if start is not None else now)
            if now - last > self._grace:
                stale.append(trial._trial_id)
        return mark_lost(self, stale)

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._on_stale


def mark_lost(storage: BaseStorage, trial_ids: list[int]) -> list[int]:
    """Give stale trials their reason while they can still take it: Optuna fails them next,
    and a finished trial's attributes no longer change."""
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, names.FAIL_REASON, LOST)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker was first
    return trial_ids


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's RDB storage, whose stale trials get their reason as they are found."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return mark_lost(self, super()._get_stale_trial_ids(study_id))
