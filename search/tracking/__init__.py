"""Everything that talks to MLflow, in one place.

- `tracker`: a search's experiment, its parent run and a run per trial (`Tracker`, `TrialRun`),
  and the lost trial's run ended (`end_lost_run`);
- `writer`: the process that writes trial runs, so that tracking never competes with training;
- `artifacts`, `render`: a trial's evaluation (confusion matrix, report) and its best model;
- `rebuild`: a study's runs rebuilt from Optuna's record (`python -m search.sync`);
- `models`: refit runs with their served model, and models loaded back (a teacher).

Outside this package no module creates MLflow runs or sets MLflow's global tracking URI.
"""

from search.tracking.tracker import MAX_PARAM_LENGTH, Tracker, TrialRun, end_lost_run, versions

__all__ = ["MAX_PARAM_LENGTH", "Tracker", "TrialRun", "end_lost_run", "versions"]
