"""search.sync: a study's MLflow runs rebuilt from its Optuna storage, checked as a user would."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from search import run as search_run
from search.sync import main
from tests.search_tests.conftest import client, load_study, runs

pytestmark = pytest.mark.slow  # real searches, processes or servers

SEARCH = ["--study", "digits", "--epochs", "2", "--pruner", "none"]
SYNC = ["--study", "digits", "--settle", "0"]


def _search_with_a_failed_trial() -> None:
    """A small digits search: a diverging trial (FAIL) and two COMPLETE ones."""
    storage = JournalStorage(JournalFileBackend("mlruns/optuna.journal"))
    study = optuna.create_study(study_name="digits", storage=storage, direction="maximize")
    study.enqueue_trial({"loss": "cross_entropy", "penalty": "none", "optimizer": "sgd",
                         "lr": 1e12, "freeze_depth": 0, "batch_size": 16})
    with pytest.warns(UserWarning, match="out of range"):
        assert search_run.main([*SEARCH, "--trials", "2"]) == 0


def _snapshot(workdir: Path) -> dict[str, Any]:
    """Every run of the digits experiment as it stands: status, times, tags, params, metrics."""
    parents, trials = runs(workdir)
    return {r.info.run_id: (r.info.status, r.info.end_time, r.data.tags, r.data.params,
                            r.data.metrics) for r in parents + trials}


def _by_trial(workdir: Path) -> dict[int, Any]:
    _, trials = runs(workdir)
    return {int(r.data.tags["optuna.trial_number"]): r for r in trials}


def test_a_deleted_tracking_store_is_rebuilt_once(
        workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _search_with_a_failed_trial()
    shutil.rmtree(workdir / "mlruns" / "artifacts")
    (workdir / "mlruns" / "mlflow.db").unlink()
    # MLflow keeps one store per database URI in a process, whose open connection would still
    # read the deleted file: a user's sync is a new process. Here, the journal moves to a new
    # folder, whose tracking store is new to this process.
    workdir = workdir / "elsewhere"
    (workdir / "mlruns").mkdir(parents=True)
    shutil.move(workdir.parent / "mlruns" / "optuna.journal", workdir / "mlruns")
    monkeypatch.chdir(workdir)
    capsys.readouterr()

    assert main(SYNC) == 0
    out = capsys.readouterr().out
    assert out == "study 'digits': 3 finished trials; 3 runs rebuilt, parent run rebuilt\n"
    study = load_study(workdir)
    parents, trials = runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.tags["search.backfilled"] == "true"
    assert parent.data.params["metric"] == "val_accuracy"
    assert parent.data.metrics == {"trials_complete": 2.0, "trials_fail": 1.0,
                                   "best_value": pytest.approx(study.best_value)}
    mlflow = client(workdir)
    by_number = _by_trial(workdir)
    assert sorted(by_number) == [t.number for t in study.trials] == [0, 1, 2]
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.data.tags["search.backfilled"] == "true"
        assert "not available" in run.data.tags["search.tracking.artifacts"]
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        history = {m.step: m.value for m in mlflow.get_metric_history(run.info.run_id,
                                                                      "val_accuracy")}
        assert history == pytest.approx(trial.intermediate_values)
        if trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert sorted(history) == [1, 2]
            assert run.data.metrics["final_val_accuracy"] == pytest.approx(trial.value)
        else:
            assert run.info.status == "FAILED"
            assert run.data.tags["optuna.fail_reason"] == trial.user_attrs["fail_reason"]
            assert "final_val_accuracy" not in run.data.metrics

    before = _snapshot(workdir)
    assert main(SYNC) == 0
    assert capsys.readouterr().out == "study 'digits': 3 finished trials; nothing to do\n"
    assert _snapshot(workdir) == before

    # search.report needs no trial artifact: it reports, and logs to the rebuilt parent run.
    from search import report
    assert report.main(["--study", "digits"]) == 0
    assert f"logged under report/ in MLflow run {parent.info.run_id}" in capsys.readouterr().out


def test_a_running_run_is_ended_and_a_missing_one_rebuilt(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search_run.main([*SEARCH, "--trials", "3"]) == 0
    mlflow = client(workdir)
    runs_before = _by_trial(workdir)
    left_running, deleted = runs_before[0].info.run_id, runs_before[1].info.run_id
    mlflow.update_run(left_running, status="RUNNING")  # as a writer that died before the end
    mlflow.set_tag(left_running, "optuna.state", "RUNNING")
    mlflow.delete_run(deleted)
    untouched = {k: v for k, v in _snapshot(workdir).items() if k != left_running}
    capsys.readouterr()

    assert main(SYNC) == 0
    assert capsys.readouterr().out == ("study 'digits': 3 finished trials; 1 run rebuilt, "
                                       "1 run ended\n")
    after = _by_trial(workdir)
    ended = after[0]
    assert ended.info.run_id == left_running and ended.info.status == "FINISHED"
    assert ended.data.tags["optuna.state"] == "COMPLETE"
    assert ended.data.tags["search.ended_by"] == "search.sync"
    assert "search.backfilled" not in ended.data.tags
    rebuilt = after[1]
    assert rebuilt.info.run_id != deleted and rebuilt.info.status == "FINISHED"
    assert rebuilt.data.tags["search.backfilled"] == "true"
    trial = load_study(workdir).trials[1]
    assert rebuilt.data.metrics["final_val_accuracy"] == pytest.approx(trial.value)
    now = _snapshot(workdir)
    assert {k: now[k] for k in untouched} == untouched  # the parent and trial 2's run
    assert len(now) == 4  # the parent and one run per trial

    assert main(SYNC) == 0
    assert capsys.readouterr().out == "study 'digits': 3 finished trials; nothing to do\n"
    assert _snapshot(workdir) == now


def test_states_lost_trials_settling_and_a_multi_objective_study(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trials made with Optuna alone: every state maps to its run status, no training needed."""
    storage = JournalStorage(JournalFileBackend("mlruns/optuna.journal"))
    study = optuna.create_study(study_name="multi", storage=storage,
                                directions=["maximize", "minimize"])
    study.set_user_attr("objectives", "accuracy,ece")
    study.set_user_attr("space", "digits")  # as search.run records it
    loss = {"loss": CategoricalDistribution(["mse", "focal"])}
    lr = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
    for state, values, attrs in (
            (TrialState.COMPLETE, [0.9, 0.05], {}),
            (TrialState.PRUNED, None, {"pruned_epoch": 2}),
            (TrialState.FAIL, None, {"fail_reason": "interrupted"}),
            (TrialState.FAIL, None, {"fail_reason": "diverged: loss is nan"})):
        study.add_trial(create_trial(state=state, values=values, params={"loss": "mse",
                                     "lr": 0.01}, distributions={**loss, **lr},
                                     intermediate_values={1: 0.5, 2: 0.6}, user_attrs=attrs))
    # A trial whose worker died on this host, with its run left RUNNING outside any parent.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost = study.ask()
    lost.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    mlflow = client(workdir)
    experiment = mlflow.create_experiment("multi")
    lost_run = mlflow.create_run(experiment, tags={"optuna.trial_number": str(lost.number)})
    lost.set_user_attr("mlflow_run_id", lost_run.info.run_id)
    running = study.ask()  # a trial still running elsewhere: left alone

    # The default --settle leaves the trials that just finished to their live writer.
    assert main(["--study", "digits", "--name", "multi"]) == 0
    assert capsys.readouterr().out == (
        "study 'multi': 5 finished trials; 1 lost trial failed, 1 run moved under the parent "
        "run, parent run rebuilt, 4 trials finished less than 30 s ago left for the next sync\n")
    found = load_study(workdir, "multi")
    assert found.trials[lost.number].state == TrialState.FAIL
    assert found.trials[-1].state == TrialState.WAITING  # the lost trial's retry
    assert mlflow.get_run(lost_run.info.run_id).info.status == "FAILED"
    parents, _ = runs(workdir, "multi")
    assert parents[0].info.status == "RUNNING"  # a trial runs: the search will end it

    assert main(["--study", "multi", "--settle", "0"]) == 0  # the study's own name will do
    assert capsys.readouterr().out == "study 'multi': 5 finished trials; 4 runs rebuilt\n"
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs(workdir, "multi")[1]}
    assert sorted(by_number) == [0, 1, 2, 3, lost.number]
    assert running.number not in by_number
    assert [by_number[n].info.status for n in range(4)] == ["FINISHED", "FINISHED", "KILLED",
                                                             "FAILED"]
    assert by_number[0].data.metrics == {"val_accuracy": 0.6, "final_val_accuracy": 0.9,
                                         "final_val_ece": 0.05}
    assert by_number[1].data.tags["optuna.pruned_epoch"] == "2"
    assert by_number[3].data.tags["optuna.fail_reason"] == "diverged: loss is nan"
    lost_tags = by_number[lost.number].data.tags
    assert lost_tags["optuna.fail_reason"] == "worker lost"
    assert lost_tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_an_unknown_study_is_one_line_and_creates_nothing(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "search.sync", "--study", "digits"],
                          capture_output=True, text=True, timeout=120)  # no storage at all
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("search.sync: error: no study 'digits' in mlruns/optuna.journal: run "
                           "python -m search.run --study digits first\n")
    assert sorted(p.name for p in (workdir / "mlruns").iterdir()) == ["cache"]

    storage = JournalStorage(JournalFileBackend("mlruns/optuna.journal"))
    optuna.create_study(study_name="digits", storage=storage)
    for argv in (["--study", "digits", "--name", "nope"], ["--study", "nope"],
                 ["--study", "digits", "--settle", "-1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("search.sync: error: "), err
        assert "Traceback" not in err
    assert not (workdir / "mlruns" / "mlflow.db").exists()
