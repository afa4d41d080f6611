"""The vocabulary of what a search writes on Optuna's trials and studies, each name spelled once.

Every module that reads or writes one of these attributes, or compares a trial's failure reason,
takes the name from here: a search, its workers, the report, the MLflow rebuild and the
benchmarks read each other's records only through them.
"""

from __future__ import annotations

from optuna.trial import FrozenTrial

# Trial user attributes.
FAIL_REASON = "fail_reason"  # why a trial failed (or was pruned by the search, not the pruner)
WORKER = "worker"  # "node:pid" of the process running the trial
PRUNED_EPOCH = "pruned_epoch"  # the epoch a pruned trial stopped after
COMPILE = "compile"  # whether the trial's model stayed compiled, or how it fell back
MLFLOW_RUN_ID = "mlflow_run_id"  # the trial's MLflow run
RECIPE = "recipe"  # a study's standard recipe: the recipe's name (its MLflow tag: search.recipe)
# A race run (search.execution.race): which finalist, on which resampling. Its round is the
# resampling's index: every finalist still in the race runs round r on resampling r.
RACE_FINALIST = "race_finalist"  # the finalist's label: "trial 12" or "recipe adamw"
RACE_ROUND = "race_round"  # 1, 2, ... R
RACE_RESAMPLING = "race_resampling"  # the seed of the resampled split and of training
RACE_TAGS = {RACE_FINALIST: "search.race", RACE_ROUND: "search.race.round",
             RACE_RESAMPLING: "search.race.resampling"}  # a race run's MLflow tags
# Trial system attributes Optuna's retry callback writes.
RETRY_OF = "failed_trial"  # on a retry: the first trial of its chain
RETRY_HISTORY = "retry_history"  # on a retry: every trial it retries, oldest first

# Study user attributes.
MLFLOW_PARENT_RUN_ID = "mlflow_parent_run_id"  # the study's MLflow run
BUDGET = "budget"  # the trials the study is to finish, across every worker and node
SPACE = "space"  # the name of the study the space came from (a shipped or own study)
BALANCE = "balance"  # the parameter whose families are balanced
GRID = "grid"  # {name: [values]} as asked
REFERENCE = "study_ref"  # the file (absolute) or module:NAME the space came from
RACE = "race"  # the race's result: finalists, their scores, the pick and the decision (JSON)
RACE_STUDY = "race_study"  # the name of the sibling study that holds the race's runs
REFITS = "family_refits"  # prefix: f"{REFITS}:{by}" holds a --per-family refit

# Failure reasons that mean something to the search itself.
LOST = "worker lost"
INTERRUPTED = "interrupted"
OVER_BUDGET = "over budget: the study's last trial went to another worker"
EXHAUSTED = "grid exhausted: every point was taken by another worker"
ELIMINATED = "eliminated: clearly worse than the race's leader on the same resamplings"
# Trials that never trained: nothing to track in MLflow.
NEVER_RAN = (OVER_BUDGET, ELIMINATED)


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (the first of the chain), or None."""
    first = trial.system_attrs.get(RETRY_OF)
    return int(first) if first is not None else None
