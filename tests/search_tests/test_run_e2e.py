"""search.run end to end on the digits study, checked through Optuna and MLflow as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives.models import small_cnn
from search.run import main
from tests.search_tests.conftest import client, load_study, runs

pytestmark = pytest.mark.slow  # real searches, processes or servers

TINY = ["--study", "digits", "--epochs", "3"]


def test_search_tracks_every_trial(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--trials", "4", "--pruner", "none"]) == 0
    out = capsys.readouterr().out

    study = load_study(workdir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    parents, trials = runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.metrics["trials_complete"] == 4
    assert len(trials) == 4

    mlflow = client(workdir)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in trials}
    assert sorted(by_number) == [0, 1, 2, 3]
    for trial in study.trials:
        run = by_number[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.state"] == "COMPLETE"
        assert run.info.status == "FINISHED"
        assert run.data.tags["version.torch"] == torch.__version__
        assert run.data.tags["version.optuna"] == optuna.__version__
        # Every sampled parameter under its own name, with the value Optuna holds.
        for name, value in trial.params.items():
            assert run.data.params[name] == str(value)
        for name in ("loss", "penalty", "optimizer", "lr", "freeze_depth", "batch_size"):
            assert name in run.data.params
        assert run.data.params["epochs"] == "3"
        # Per-epoch curves with the epoch as step.
        for key in ("train_loss", "val_accuracy", "val_cross_entropy", "val_macro_f1", "lr",
                    "epoch_seconds", "images_per_second"):
            history = mlflow.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [1, 2, 3], key
        accuracy = {m.step: m.value for m in mlflow.get_metric_history(run.info.run_id,
                                                                       "val_accuracy")}
        assert accuracy[3] == pytest.approx(trial.value)
        assert trial.intermediate_values == pytest.approx(accuracy)
        artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
        assert {"config.json", "confusion_matrix.png", "classification_report.txt"} <= artifacts
        config = json.loads(Path(mlflow.download_artifacts(run.info.run_id, "config.json",
                                                           str(workdir / f"dl{trial.number}")))
                            .read_text())
        assert config["loss"] == trial.params["loss"]
        assert config["lr"] == pytest.approx(trial.params["lr"])
        png = Path(mlflow.download_artifacts(run.info.run_id, "confusion_matrix.png",
                                             str(workdir / f"dl{trial.number}")))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The best trial's weights are logged and load into the digits backbone.
    best = by_number[study.best_trial.number]
    assert best.data.tags["best_so_far"] == "true"
    weights = mlflow.download_artifacts(best.info.run_id, "model/state_dict.pt",
                                        str(workdir / "best"))
    model = small_cnn(5)
    model.load_state_dict(torch.load(weights))

    assert "top 4 trials" in out
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in out
    assert "4 complete" in out


def test_resume_continues_the_same_study_and_parent_run(workdir: Path) -> None:
    assert main([*TINY, "--trials", "2", "--pruner", "none"]) == 0
    first = load_study(workdir)
    first_params = [t.params for t in first.trials]
    assert main(["--study", "digits", "--trials", "4", "--pruner", "none"]) == 0

    study = load_study(workdir)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # The resumed sampler does not replay the first run's draws.
    assert [t.params for t in study.trials[2:]] != first_params
    parents, trials = runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    # A budget already met runs nothing more.
    assert main(["--study", "digits", "--trials", "4"]) == 0
    assert len(load_study(workdir).trials) == 4


def test_diverging_trial_fails_with_its_reason_and_the_search_goes_on(workdir: Path) -> None:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend("mlruns/optuna.journal"))
    study = optuna.create_study(study_name="digits", storage=storage, direction="maximize")
    # A user's enqueued config with an absurd learning rate: the loss blows up.
    study.enqueue_trial({"loss": "cross_entropy", "penalty": "none", "optimizer": "sgd",
                         "lr": 1e12, "freeze_depth": 0, "batch_size": 16})
    with pytest.warns(UserWarning, match="out of range"):
        assert main([*TINY, "--trials", "2", "--pruner", "none"]) == 0

    study = load_study(workdir)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    failed = study.trials[0]
    assert failed.user_attrs["fail_reason"].startswith("diverged: training loss is")
    assert "epoch 1" in failed.user_attrs["fail_reason"]
    _, trials = runs(workdir)
    run = next(r for r in trials if r.data.tags["optuna.trial_number"] == "0")
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["optuna.fail_reason"] == failed.user_attrs["fail_reason"]
    assert not any(r.info.status == "RUNNING" for r in trials)


def test_ctrl_c_ends_everything_and_a_rerun_finishes(workdir: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    log = workdir / "out.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "search.run", *TINY, "--trials", "40", "--pruner", "none"],
        cwd=workdir, stdout=log.open("w"), stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while "trial   1 " not in log.read_text():  # interrupt mid-search, after two trials
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted; run the same command again" in err
    assert "Traceback" not in err

    study = load_study(workdir)
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    parents, trials = runs(workdir)
    assert parents[0].info.status == "KILLED"
    assert not any(r.info.status == "RUNNING" for r in trials)
    done = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert done >= 2
    assert main(["--study", "digits", "--trials", str(done + 2), "--pruner", "none"]) == 0
    study = load_study(workdir)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == done + 2
    assert runs(workdir)[0][0].info.status == "FINISHED"


@pytest.mark.parametrize(("sampler", "pruner"), [("tpe", "asha"), ("random", "median"),
                                                 ("gp", "percentile"), ("cmaes", "hyperband")])
def test_every_sampler_and_pruner_runs_a_search(workdir: Path, sampler: str, pruner: str) -> None:
    assert main(["--study", "digits", "--epochs", "2", "--trials", "7", "--sampler", sampler,
                 "--pruner", pruner]) == 0
    study = load_study(workdir)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 7
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 7  # no repeated configs
    parents, trials = runs(workdir)
    assert parents[0].data.tags["search.sampler"] == sampler
    assert parents[0].data.tags["search.pruner"] == pruner
    assert len(trials) == len(study.trials)


def test_a_broken_gpu_stops_a_lone_search_with_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a sticky CUDA error the process's CUDA context is unusable: a search without a
    launcher records the trial as failed, starts no other, and stops with one line."""
    def illegal_access(*args: object, **kwargs: object) -> None:
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr("search.execution.trial.fine_tune", illegal_access)
    # No recipe: the study's second recipe would stay queued behind the failed first trial.
    assert main([*TINY, "--trials", "4", "--recipes", "none"]) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("search.run: error: CUDA error, the worker's CUDA context is broken")
    assert "run the same command again" in err and "Traceback" not in err
    study = load_study(workdir)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    parents, trials = runs(workdir)
    assert [r.info.status for r in [*parents, *trials]] == ["FAILED", "FAILED"]
    assert trials[0].data.tags["optuna.fail_reason"] == study.trials[0].user_attrs["fail_reason"]
