"""Successive halving and Hyperband, asked only at the epochs where they can decide.

Optuna's SuccessiveHalvingPruner (and each Hyperband bracket, one of them) judges a trial only
when its last reported step reaches its next rung, min_resource * reduction_factor ** k; at
every other step it answers False, but only after reading the trial's system attributes, and,
under Hyperband, the study's name and directions, from the storage. `trial.should_prune()`
after every epoch's report therefore costs three storage reads an epoch: 6.7 ms a report on
PostgreSQL, measured with cProfile on the curves study. Batching the reports instead would
hold back values other workers' pruners and the dashboards read, and lose them when a worker
dies; no Optuna option skips the reads, hence these subclasses (subclasses, not wrappers:
Optuna's samplers see a Hyperband study one bracket at a time only when
`isinstance(study.pruner, HyperbandPruner)`).

The gate is exact. A trial's first question in this process always reaches the pruner (a
retry starts with its own rungs, maybe past a rung step). After the pruner has judged the
trial at step s and kept it, every rung whose step is at most s has been judged (the pruner
loops over them), and only this process writes this trial's rungs,
so the pruner's next answer other than False comes at the first step past s that is a rung
step of some bracket: min_resource * reduction_factor ** k. Until then the gate answers False
without asking. tests/search_tests/test_rungs.py checks that whole searches prune the same
trials at the same epochs with and without the gate.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial


class _RungGate:
    """The gate; mixed in before a pruner whose rungs are min_resource * reduction_factor ** k
    (its `prune` is the pruner's, behind the gate)."""

    def _gate(self, min_resource: int, reduction_factor: int) -> None:
        if min_resource < 1 or reduction_factor < 2:
            raise ValueError(f"rungs need min_resource >= 1 and reduction_factor >= 2, got "
                             f"{min_resource} and {reduction_factor}")
        self._rung_base, self._rung_factor = min_resource, reduction_factor
        self._judged: dict[int, int] = {}  # trial id -> last step the pruner judged and kept
        self.asked = 0  # questions passed to the pruner (the benchmark and tests read it)

    def _next_rung(self, step: int) -> int:
        """The first rung step of any bracket after `step`."""
        rung = self._rung_base
        while rung <= step:
            rung *= self._rung_factor
        return rung

    def _due(self, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        judged = self._judged.get(trial._trial_id)
        return judged is None or step >= self._next_rung(judged)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self._due(trial):
            return False
        self.asked += 1
        pruned: bool = super().prune(study, trial)  # type: ignore[misc]  # the pruner's own
        if pruned:  # asked again, the pruner answers again (a NaN is pruned every time)
            self._judged.pop(trial._trial_id, None)
        else:
            assert trial.last_step is not None
            self._judged[trial._trial_id] = trial.last_step
        return pruned


class GatedHyperband(_RungGate, optuna.pruners.HyperbandPruner):
    """optuna.pruners.HyperbandPruner with integer resources, asked only at rung steps."""

    def __init__(self, *, min_resource: int, max_resource: int, reduction_factor: int) -> None:
        self._gate(min_resource, reduction_factor)
        super().__init__(min_resource=min_resource, max_resource=max_resource,
                         reduction_factor=reduction_factor)


class GatedSuccessiveHalving(_RungGate, optuna.pruners.SuccessiveHalvingPruner):
    """optuna.pruners.SuccessiveHalvingPruner (ASHA) with an integer min_resource, asked only
    at rung steps."""

    def __init__(self, *, min_resource: int, reduction_factor: int) -> None:
        self._gate(min_resource, reduction_factor)
        super().__init__(min_resource=min_resource, reduction_factor=reduction_factor)
