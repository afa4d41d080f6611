"""search.refit: the best trial retrained on train + validation, tested once, logged as a model
that loads back; and the test split untouched by the search itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives.config import TrialConfig
from objectives.corruptions import CORRUPTIONS
from objectives.data import ImageData, Split, Task
from objectives.digits import load_digits_task
from objectives.train import fine_tune
from search.refit import main
from search.run import main as run_main
from tests.search_tests.conftest import client, load_study


def test_refit_of_the_best_trial_reloads_and_reproduces_its_test_accuracy(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(["--study", "digits", "--trials", "3", "--epochs", "3", "--pruner",
                     "none"]) == 0
    capsys.readouterr()
    assert main(["--study", "digits"]) == 0
    out = capsys.readouterr().out
    study = load_study(workdir)
    best = study.best_trial
    assert f"refit of trial {best.number}" in out

    mlflow_client = client(workdir)
    experiment = mlflow_client.get_experiment_by_name("digits")
    refits = mlflow_client.search_runs([experiment.experiment_id],
                                       filter_string="tags.`search.role` = 'refit'")
    assert len(refits) == 1
    run = refits[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["search.refit_of_trial"] == str(best.number)
    assert run.data.tags["search.refit_of_run"] == best.user_attrs["mlflow_run_id"]
    assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
    metrics = run.data.metrics
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and 0 <= metrics["test_ece"] <= 1
    for corruption in CORRUPTIONS:
        assert 0 <= metrics[f"corrupt/{corruption}"] <= 1
    assert metrics["test_corruption_accuracy"] <= metrics["test_accuracy"] + 0.05
    assert {f"test_recall/{name}" for name in ("5", "6", "7", "8", "9")} <= set(metrics)
    # Trained on train + validation, at the trial's settings.
    assert run.data.params["lr"] == str(best.params["lr"]) and run.data.params["epochs"] == "3"

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    test = load_digits_task(cache_dir=workdir / "mlruns" / "cache", seed=0).data.test
    with torch.inference_mode():
        predicted = model(test.x).argmax(dim=1)  # uint8 images in: preprocessing is inside
    accuracy = float((predicted == test.y).float().mean())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_refit_bad_input(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--study", "digits"]) == 2
    assert "no study 'digits'" in capsys.readouterr().err
    assert run_main(["--study", "digits", "--trials", "1", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["--study", "digits", "--trial", "99"]) == 2
    assert "no trial 99" in capsys.readouterr().err


class _Untouchable:
    """A split that fails any use: the search must never look at the test split."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the search touched the test split ({name})")

    def __len__(self) -> int:
        raise AssertionError("the search touched the test split (len)")


def test_the_search_never_touches_the_test_split(tmp_path: Path) -> None:
    from search.tracking import Tracker
    from search.trial import TrialRunner
    from spaces import Settings
    from spaces.digits import STUDY

    task = load_digits_task(cache_dir=tmp_path / "cache", seed=0)
    guarded = ImageData(task.data.train, task.data.val, _Untouchable(),  # type: ignore[arg-type]
                        task.data.class_names, task.data.mean, task.data.std,
                        crop_padding=task.data.crop_padding)
    guarded_task = Task("guarded", guarded, task.make_model).to("cpu")
    fine_tune(TrialConfig(epochs=1), guarded_task)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri=uri, experiment="guarded",
                      artifact_location=(tmp_path / "artifacts").as_uri())
    parent = tracker.study_run(run_id=None, name="guarded", params={}, tags={})
    runner = TrialRunner(study=STUDY, task=guarded_task, tracker=tracker, parent_run_id=parent,
                         settings=Settings(epochs=2, seed=0))
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=2)
    tracker.close()
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert isinstance(task.data.test, Split)
