"""One trial: the space makes a config, objectives trains it, Optuna prunes it, MLflow records it.

Outcomes map to states explicitly, as Optuna's own `_run_trial` does: COMPLETE with its value,
PRUNED with the epoch, FAIL with a reason. Whatever happens, the MLflow run is ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
import torch

from objectives.train import DivergedError, fine_tune
from search.artifacts import log_evaluation, log_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from objectives.config import TrialConfig
    from objectives.data import Task
    from objectives.train import EpochCallback
    from search.tracking import Tracker, TrialRun
    from spaces import Study

# Config fields that only mean something when a choice enables them; logged when sampled.
CONDITIONAL = frozenset(
    {"label_smoothing", "focal_gamma", "huber_delta", "kl_smoothing", "penalty_lambda",
     "momentum", "nesterov"}
)


def failure_reason(error: BaseException) -> str:
    if isinstance(error, DivergedError):
        return f"diverged: {error}"
    if isinstance(error, torch.OutOfMemoryError):
        return f"out of memory: {str(error).splitlines()[0]}"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class TrialRunner:
    study: Study
    task: Task
    tracker: Tracker
    parent_run_id: str
    epochs: int
    seed: int
    device: str = "cpu"

    def _start_run(self, trial: optuna.Trial, params: dict[str, object]) -> TrialRun:
        return self.tracker.trial_run(
            parent_run_id=self.parent_run_id, trial_number=trial.number, params=params,
            tags={"optuna.study_name": trial.study.study_name, "device": self.device},
        )

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            config = self.study.space(trial, epochs=self.epochs, seed=self.seed)
        except Exception as e:  # a bug in a space, or values it rejects: recorded like any
            reason = f"in the search space: {failure_reason(e)}"
            trial.set_user_attr("fail_reason", reason)
            run = self._start_run(trial, dict(trial.params))
            run.finish("FAIL", tags={"optuna.fail_reason": reason})
            self._link(trial, run)
            raise
        params = {k: v for k, v in config.to_dict().items() if k not in CONDITIONAL}
        params.update(trial.params)
        run = self._start_run(trial, params)
        run.add_json("config.json", config.to_dict())
        metric = self.study.metric
        last_epoch = 0

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal last_epoch
            last_epoch = epoch
            if run.created:  # link as soon as the writer has the run; never wait mid-trial
                self._link(trial, run)
            run.log_epoch(epoch, metrics)
            trial.report(metrics[metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            return self._train(trial, config, run, on_epoch, lambda: last_epoch)
        finally:
            self._link(trial, run)

    @staticmethod
    def _link(trial: optuna.Trial, run: TrialRun) -> None:
        """Store the trial's MLflow run id in Optuna, once (at the latest as the trial ends)."""
        if not run.linked and run.run_id is not None:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            run.linked = True

    def _train(self, trial: optuna.Trial, config: TrialConfig, run: TrialRun,
               on_epoch: EpochCallback, last_epoch: Callable[[], int]) -> float:
        metric = self.study.metric
        try:
            result = fine_tune(config, self.task, device=self.device, on_epoch=on_epoch)
        except optuna.TrialPruned:
            trial.set_user_attr("pruned_epoch", last_epoch())
            run.finish("PRUNED", tags={"optuna.pruned_epoch": str(last_epoch())})
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            run.finish("FAIL", tags={"optuna.fail_reason": "interrupted"}, killed=True)
            raise
        except Exception as e:
            reason = failure_reason(e)
            trial.set_user_attr("fail_reason", reason)
            run.finish("FAIL", tags={"optuna.fail_reason": reason})
            if isinstance(e, torch.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise
        value = result.final[metric]
        if not math.isfinite(value):
            reason = f"{metric} is {value}"
            trial.set_user_attr("fail_reason", reason)
            run.finish("FAIL", tags={"optuna.fail_reason": reason})
            raise ValueError(reason)
        if result.val_logits is not None and result.val_targets is not None:
            log_evaluation(run, result.val_logits, result.val_targets,
                           self.task.data.class_names)
        best = self._is_best(trial, value)
        if best:
            log_model(run, result.model)
        run.finish("COMPLETE", tags={"best_so_far": str(best).lower()},
                   metrics={f"final_{metric}": value})
        return value

    def _is_best(self, trial: optuna.Trial, value: float) -> bool:
        try:
            best = trial.study.best_value
        except ValueError:  # no completed trial yet
            return True
        return value > best if self.study.direction == "maximize" else value < best
