"""`--objectives accuracy,ece`: a multi-objective search end to end, then its report's front."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from search import report
from search import run as search_run
from tests.search_tests.conftest import load_study, runs

pytestmark = pytest.mark.slow  # real searches, processes or servers


def test_accuracy_and_calibration_search_and_its_pareto_front(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = search_run.main(["--study", "digits", "--trials", "4", "--epochs", "2",
                              "--objectives", "accuracy,ece", "--seed", "3"])
    assert status == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err  # tracebacks: stderr

    study = load_study(workdir)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.user_attrs["objectives"] == "accuracy,ece"
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 4  # nothing is pruned: pruning needs one objective
    parents, trials = runs(workdir)
    assert len(parents) == 1 and len(trials) == 4
    for trial in finished:
        accuracy, ece = trial.values
        assert 0.0 <= accuracy <= 1.0 and 0.0 <= ece <= 1.0
        run = next(r for r in trials if r.info.run_id == trial.user_attrs["mlflow_run_id"])
        # The values Optuna holds are the run's last-epoch validation metrics.
        assert run.data.metrics["val_accuracy"] == pytest.approx(accuracy)
        assert run.data.metrics["val_ece"] == pytest.approx(ece)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert parents[0].data.metrics["pareto_front_size"] == len(study.best_trials)

    # Resuming with other objectives would mix incomparable trials: refused, one line.
    assert search_run.main(["--study", "digits", "--trials", "5", "--epochs", "2",
                            "--objectives", "accuracy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objectives" in err[0]

    assert report.main(["--study", "digits"]) == 0
    out = capsys.readouterr().out
    assert f"Pareto front of study 'digits': {len(study.best_trials)} trials" in out
    with open(workdir / "mlruns" / "reports" / "digits" / "pareto_front.csv") as f:
        front = list(csv.DictReader(f))
    assert {int(r["trial"]) for r in front} == {t.number for t in study.best_trials}
    for row in front:  # nothing on the front is dominated by any finished trial
        a, e = float(row["val_accuracy"]), float(row["val_ece"])
        assert not any(t.values[0] >= a and t.values[1] <= e and tuple(t.values) != (a, e)
                       for t in finished)
