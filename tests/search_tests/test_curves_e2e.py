"""The `curves` study through the real stack: four workers on one journal, pruning, MLflow
runs with curves and artifacts, a killed worker's trial resumed from its checkpoint; and the
options that do not apply to it, or apply to it alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from objectives.config import TrialConfig
from objectives.curves import curve
from tests.search_tests.conftest import client, load_study, ran, runs
from tests.support import one_error_line

pytestmark = pytest.mark.slow  # real searches in processes of their own

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def search(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search.run", "--study", "curves", *args],
                          cwd=workdir, capture_output=True, text=True, timeout=600)


def test_four_workers_run_the_budget_exactly_with_every_trial_tracked(workdir: Path) -> None:
    done = search(workdir, "--workers", "4", "--trials", "24", "--epochs", "6",
                  "--time-scale", "0.002")
    assert done.returncode == 0, done.stdout + done.stderr
    study = load_study(workdir, "curves")
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == 24
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    assert len({t.user_attrs["worker"] for t in study.trials}) == 4
    assert any(t.state == TrialState.PRUNED for t in study.trials)  # Hyperband at work
    parents, trial_runs = runs(workdir, "curves")
    assert len(trial_runs) == len(ran(study))
    assert all(r.info.status != "RUNNING" for r in [*parents, *trial_runs])
    # A completed trial's run holds its whole curve, the one its configuration maps to, and
    # the artifacts of a real trial.
    best = study.best_trial
    run = next(r for r in trial_runs
               if r.data.tags["optuna.trial_number"] == str(best.number))
    history = client(workdir).get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 7))
    config = TrialConfig(**_config_json(workdir, run.info.run_id))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        list(curve(config).accuracy), abs=6e-4)
    artifacts = {a.path for a in client(workdir).list_artifacts(run.info.run_id)}
    assert {"config.json", "confusion_matrix.csv"} <= artifacts, artifacts


def _config_json(workdir: Path, run_id: str) -> dict[str, object]:
    import json

    path = client(workdir).download_artifacts(run_id, "config.json", str(workdir))
    return json.loads(Path(path).read_text())


def test_the_same_seed_searches_the_same_trials_with_the_same_values(workdir: Path) -> None:
    # Unpruned: Hyperband's brackets hash the study's name, so two names prune differently.
    for name in ("a", "b"):
        done = search(workdir, "--name", name, "--trials", "8", "--epochs", "4",
                      "--time-scale", "0", "--pruner", "none")
        assert done.returncode == 0, done.stderr
    a, b = load_study(workdir, "a"), load_study(workdir, "b")
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.intermediate_values for t in a.trials] == [t.intermediate_values for t in b.trials]


@pytest.mark.parametrize(("args", "expected"), [
    (["--study", "digits", "--time-scale", "1"], "--time-scale does not apply to study 'digits'"),
    (["--study", "curves", "--time-scale", "-1"], "--time-scale"),
    (["--study", "curves", "--data-dir", "x"], "--data-dir does not apply to study 'curves'"),
])
def test_options_that_do_not_apply_are_one_line_and_create_nothing(
    workdir: Path, args: list[str], expected: str,
) -> None:
    done = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert expected in one_error_line(done.stderr)
    assert not (workdir / "mlruns" / "optuna.journal").exists()


def test_refit_says_a_simulated_study_has_no_model(workdir: Path) -> None:
    assert search(workdir, "--trials", "2", "--epochs", "2", "--time-scale", "0"
                  ).returncode == 0
    done = subprocess.run([sys.executable, "-m", "search.refit", "--study", "curves"],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "simulates its training" in one_error_line(done.stderr, "search.refit")
