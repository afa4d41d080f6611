"""One trial: the space makes a config, objectives trains it, Optuna prunes it, MLflow records it.

Outcomes map to states explicitly, as Optuna's own `_run_trial` does: COMPLETE with its value,
PRUNED with the epoch, FAIL with a reason. Whatever happens, the MLflow run is ended.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import optuna
import torch
from optuna.trial import FrozenTrial

from objectives.failures import cuda_broken, free_after, out_of_memory, release_memory
from objectives.interrupts import check_stop
from objectives.losses import LOSS_PARAMS
from objectives.metrics import per_class_recall
from objectives.train import DivergedError, fine_tune
from search.core import names
from search.execution import recovery
from search.tracking.artifacts import log_evaluation, log_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from objectives.config import TrialConfig
    from objectives.data import Task
    from objectives.train import EpochCallback
    from search.tracking import Tracker, TrialRun
    from spaces import Settings, Study

# Config fields that only mean something when a choice enables them; logged when sampled:
# these and every parameter a loss declares.
CONDITIONAL = frozenset(
    {"penalty_lambda", "momentum", "nesterov", "distill_base",
     *(p.field for params in LOSS_PARAMS.values() for p in params)}
)


COMPILE_FALLBACK = ("fallback: ran eagerly (torch.compile could not keep this run's graphs; "
                    "see the worker's warning)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def failure_reason(error: BaseException) -> str:
    if isinstance(error, DivergedError):
        return f"diverged: {error}"
    if (oom := out_of_memory(error)) is not None:
        return f"out of memory: {_first_line(oom)}"
    if (broken := cuda_broken(error)) is not None:
        return f"CUDA error, the worker's CUDA context is broken: {_first_line(broken)}"
    text = _first_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, decided once (`ended_by`, or the trial's values) and recorded once:
    Optuna's user attrs and the MLflow run's state, tags and final metrics."""

    state: str  # COMPLETE, PRUNED or FAIL: the run's optuna.state
    reason: str | None = None  # why it failed: Optuna's fail_reason, the run's tag
    pruned_epoch: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    killed: bool = False  # interrupted: the run ends KILLED, not FAILED

    def record(self, trial: optuna.Trial, run: TrialRun) -> None:
        tags = dict(self.tags)
        if self.reason is not None:
            trial.set_user_attr(names.FAIL_REASON, self.reason)
            tags["optuna.fail_reason"] = self.reason
        if self.pruned_epoch is not None:
            trial.set_user_attr(names.PRUNED_EPOCH, self.pruned_epoch)
            tags["optuna.pruned_epoch"] = str(self.pruned_epoch)
        run.finish(self.state, tags=tags, metrics=self.metrics, killed=self.killed)


def ended_by(error: BaseException, epoch: int) -> Outcome | None:
    """The outcome of training that raised `error` after `epoch` epochs; None for an exit of
    the process (SystemExit and the like), which records nothing."""
    if isinstance(error, optuna.TrialPruned):
        return Outcome("PRUNED", pruned_epoch=epoch)
    if isinstance(error, KeyboardInterrupt):
        return Outcome("FAIL", reason=recovery.INTERRUPTED, killed=True)
    if not isinstance(error, Exception):
        return None
    return Outcome("FAIL", reason=failure_reason(error))


class Variant(Protocol):
    """What makes some trials other than the search's own (a race's runs, see
    search.execution.race): whether one runs at all, and what it trains on."""

    def admit(self, trial: optuna.Trial) -> None:
        """Raise optuna.TrialPruned (its reason set) for a trial not to be trained."""

    def vary(self, trial: FrozenTrial, task: Task,
             settings: Settings) -> tuple[Task, Settings, dict[str, str]]:
        """The task and settings the trial trains with, and tags for its run."""


@dataclass
class TrialRunner:
    study: Study
    task: Task
    tracker: Tracker
    parent_run_id: str
    settings: Settings
    device: str = "cpu"
    compile: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # on every trial's run
    checkpoint_dir: Path | None = None  # per-epoch checkpoints, so a lost trial's retry resumes
    checkpoint_seconds: float = 30.0  # at most one checkpoint this often
    metrics: tuple[str, ...] = ()  # the values returned; default the study's metric; several:
    # a multi-objective study, which Optuna does not prune (no report, no should_prune)
    teacher: torch.nn.Module | None = None  # for the distill loss: uint8 images to logits
    # Set when a trial hit a sticky CUDA error: this process's CUDA context is unusable, so
    # the search stops after that trial and the process ends (a launcher replaces it).
    broken: str | None = None
    variant: Variant | None = None  # a race's runs: admitted, resampled and tagged as such

    def _start_run(self, trial: optuna.Trial, params: dict[str, object],
                   tags: dict[str, str] | None = None) -> TrialRun:
        recipe = trial.user_attrs.get(names.RECIPE)  # a study's standard recipe: its name
        return self.tracker.trial_run(
            parent_run_id=self.parent_run_id, trial_number=trial.number, params=params,
            tags={"optuna.study_name": trial.study.study_name, "device": self.device,
                  **self.tags, **({"search.recipe": str(recipe)} if recipe else {}),
                  **(tags or {})},
        )

    @property
    def objective_metrics(self) -> tuple[str, ...]:
        return self.metrics or (self.study.metric,)

    def _claim(self, trial: optuna.Trial) -> tuple[FrozenTrial, dict[str, str]]:
        """Record which worker runs the trial; for a retry, tags that link the lost trial."""
        state = recovery.frozen(trial)
        # Search.optimize claims trials as Optuna creates them (recovery.claim_at_birth): write
        # only when that did not happen, or when a retry holds its lost worker's id.
        if state.user_attrs.get(recovery.WORKER) != recovery.worker_id():
            trial.set_user_attr(recovery.WORKER, recovery.worker_id())
        first = recovery.retry_of(state)
        if first is None:
            return state, {}
        tags = {"search.retry_of_trial": str(first)}
        lost_run = state.user_attrs.get(names.MLFLOW_RUN_ID)  # copied from the lost trial
        if lost_run:
            tags["search.retry_of_run"] = str(lost_run)
        trial.set_user_attr(names.FAIL_REASON, None)  # the lost trial's, copied by the retry
        return state, tags

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (a preempted job), wherever it lands in the trial: the trial
            # fails as "interrupted", and its retry, queued now, resumes from the checkpoint
            # when the search runs again.
            if trial.user_attrs.get(names.FAIL_REASON) != recovery.INTERRUPTED:
                trial.set_user_attr(names.FAIL_REASON, recovery.INTERRUPTED)
            recovery.retry(trial.study, recovery.frozen(trial))
            raise

    def _run(self, trial: optuna.Trial) -> float:
        state, retry_tags = self._claim(trial)
        task, settings = self.task, self.settings
        if self.variant is not None:
            self.variant.admit(trial)
            task, settings, variant_tags = self.variant.vary(state, task, settings)
            retry_tags = {**retry_tags, **variant_tags}
        try:
            config = self.study.space(trial, settings)
        except Exception as e:  # a bug in a space, or values it rejects: recorded like any
            run = self._start_run(trial, dict(trial.params))
            Outcome("FAIL", reason=f"in the search space: {failure_reason(e)}").record(trial, run)
            self._link(trial, run)
            raise
        params = {k: v for k, v in config.to_dict().items() if k not in CONDITIONAL}
        params.update(trial.params)
        run = self._start_run(trial, params, retry_tags)
        run.add_json("config.json", config.to_dict())
        checkpoint = (recovery.checkpoint_path(self.checkpoint_dir, trial.study.study_name,
                                               state) if self.checkpoint_dir else None)
        metric = self.objective_metrics[0]
        single = len(self.objective_metrics) == 1
        last_epoch = 0
        # A retry inherits its lost trial's reports; epochs after the checkpoint it resumes
        # from are trained again, and their first report stands (Optuna keeps the first).
        inherited = set(state.intermediate_values)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal last_epoch
            last_epoch = epoch
            if "compiled" in metrics:  # under --compile: did this epoch run compiled?
                self._compile_status(trial, run, metrics["compiled"])
            if run.created:  # link as soon as the writer has the run; never wait mid-trial
                self._link(trial, run)
            run.log_epoch(epoch, metrics)
            if single:
                if epoch not in inherited:
                    trial.report(metrics[metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            check_stop()  # a SIGTERM whose KeyboardInterrupt Python lost

        keep = False
        try:
            return self._train(trial, config, task, run, on_epoch, lambda: last_epoch,
                               checkpoint)
        except KeyboardInterrupt:
            keep = True  # for the retry (see __call__)
            raise
        finally:
            self._link(trial, run)
            if checkpoint is not None and not keep:
                # Finished one way or another: what is worth keeping is an MLflow artifact.
                checkpoint.unlink(missing_ok=True)

    @staticmethod
    def _compile_status(trial: optuna.Trial, run: TrialRun, compiled: float) -> None:
        """Record once (and again if it changes) whether the trial ran compiled."""
        status = "compiled" if compiled else COMPILE_FALLBACK
        if trial.user_attrs.get(names.COMPILE) != status:
            trial.set_user_attr(names.COMPILE, status)
            run.set_tags({"search.compile": status})

    @staticmethod
    def _link(trial: optuna.Trial, run: TrialRun) -> None:
        """Store the trial's MLflow run id in Optuna, once (at the latest as the trial ends)."""
        if not run.linked and run.run_id is not None:
            trial.set_user_attr(names.MLFLOW_RUN_ID, run.run_id)
            run.linked = True

    def _train(self, trial: optuna.Trial, config: TrialConfig, task: Task, run: TrialRun,
               on_epoch: EpochCallback, last_epoch: Callable[[], int],
               checkpoint: Path | None) -> float:
        try:
            train = self.study.train or fine_tune  # a simulating study brings its own
            result = train(config, task, device=self.device, on_epoch=on_epoch,
                           compile=self.compile, checkpoint=checkpoint,
                           checkpoint_seconds=self.checkpoint_seconds, teacher=self.teacher)
        except BaseException as e:
            if isinstance(e, Exception) and not isinstance(e, optuna.TrialPruned):
                run.add_artifact("traceback.txt", "".join(traceback.format_exception(e)))
            # The traceback holds the run's model, gradients, optimizer state and batches, and
            # Optuna keeps the exception: free them now, not when the cyclic GC next runs.
            free_after(e)
            self._failed(trial, run, e, last_epoch())
            raise
        values = [result.final[m] for m in self.objective_metrics]
        bad = [(m, v) for m, v in zip(self.objective_metrics, values, strict=True)
               if not math.isfinite(v)]
        if bad:
            reason = f"{bad[0][0]} is {bad[0][1]}"
            Outcome("FAIL", reason=reason).record(trial, run)
            raise ValueError(reason)
        if result.val_logits is not None and result.val_targets is not None:
            log_evaluation(run, result.val_logits, result.val_targets,
                           task.data.class_names)
        best = self._is_best(trial, values[0])
        if best:
            log_model(run, result.model)
        tags = {"best_so_far": str(best).lower()}
        if result.resumed_from:
            tags["search.resumed_from_epoch"] = str(result.resumed_from)
        final = {f"final_{m}": v for m, v in zip(self.objective_metrics, values, strict=True)}
        if result.val_logits is not None and result.val_targets is not None:
            classes = task.data.class_names
            recalls = per_class_recall(result.val_logits, result.val_targets, len(classes))
            final.update({f"val_recall/{n}": r for n, r in zip(classes, recalls, strict=True)})
        Outcome("COMPLETE", tags=tags, metrics=final).record(trial, run)
        return values[0] if len(values) == 1 else tuple(values)  # type: ignore[return-value]

    def _failed(self, trial: optuna.Trial, run: TrialRun, error: BaseException,
                epoch: int) -> None:
        """Record how training ended without a result (pruned, interrupted or failed), then
        what that asks of this process: memory given back, a retry, or a stop."""
        outcome = ended_by(error, epoch)
        if outcome is None:
            return  # SystemExit and the like: the process is ending
        outcome.record(trial, run)
        if outcome.state == "PRUNED":
            if self.device == "cuda":
                release_memory()  # the cache back to the GPU's other trials
            return
        if outcome.killed:
            return
        reason = outcome.reason
        if cuda_broken(error) is not None:
            # Every later CUDA call in this process would fail too: stop after this trial.
            # Not retried: the configuration itself may be what broke the device.
            self.broken = reason
            trial.study.stop()
        elif out_of_memory(error) is not None:
            # Free the memory for the next trial, and try the configuration again: with
            # several trials per GPU, a neighbour may have held the memory. The retry (at
            # most recovery.MAX_RETRY) resumes from the trial's checkpoint; a failed trial
            # is not scored, so the sampler learns nothing false from it.
            release_memory()
            recovery.retry(trial.study, recovery.frozen(trial))

    @staticmethod
    def _is_best(trial: optuna.Trial, value: float) -> bool:
        """Whether `value` (the first objective) beats every completed trial's."""
        study = trial.study
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        if len(study.directions) == 1:
            # One query on a database (Optuna's RDB storage orders by value), not a read of
            # every trial as below.
            try:
                best = study.best_value
            except ValueError:  # no completed trial yet
                return True
        else:
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not done:
                return True
            best = (max if maximize else min)(t.values[0] for t in done)
        return value > best if maximize else value < best
