"""search.refit: the best trial retrained on train + validation, tested once, logged as a model
that loads back; and the test split untouched by the search itself, and read by the refit only
to evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from objectives.config import TrialConfig
from objectives.corruptions import CORRUPTIONS, SEVERITIES
from objectives.data import ImageData, Split, Task
from objectives.digits import load_digits_task
from objectives.train import fine_tune
from search.core import runtime
from search.refit import main
from search.review import refit as refit_module
from search.review.refit import REFIT_RULE, _run_tags, evaluate, refit_config
from search.run import main as run_main
from tests.search_tests.conftest import client, load_study
from tests.support import Untouchable, with_test

pytestmark = pytest.mark.slow  # real searches, processes or servers


def test_refit_of_the_best_trial_reloads_and_reproduces_its_test_accuracy(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every task the search and the refit load has its test split guarded; refit's evaluate
    # alone is handed the real one. Any other reader (training, validation, the model's
    # logged input example) fails the run.
    real_load, real_evaluate = runtime.load_task, refit_module.evaluate
    test = load_digits_task(cache_dir=workdir / "mlruns" / "cache", seed=0).data.test
    evaluated = []

    def load_guarded(*args: Any) -> Task:
        return with_test(real_load(*args), Untouchable())

    def evaluate_on_the_test_split(model: Any, task: Task, *, resolution: int) -> Any:
        assert isinstance(task.data.test, Untouchable)
        evaluated.append(task.name)
        return real_evaluate(model, with_test(task, test), resolution=resolution)

    monkeypatch.setattr(runtime, "load_task", load_guarded)
    monkeypatch.setattr(refit_module, "evaluate", evaluate_on_the_test_split)
    assert run_main(["--study", "digits", "--trials", "3", "--epochs", "3", "--pruner",
                     "none"]) == 0
    capsys.readouterr()
    assert main(["--study", "digits"]) == 0
    assert evaluated == ["digits-refit"]  # once
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
    # The device as a trial's run records it (and the GPU's name, on CUDA).
    assert runtime.device_tags(runtime.pick_device("auto")).items() <= run.data.tags.items()
    metrics = run.data.metrics
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and 0 <= metrics["test_ece"] <= 1
    for corruption in CORRUPTIONS:
        assert 0 <= metrics[f"corrupt/{corruption}"] <= 1
    assert metrics["test_corruption_accuracy"] <= metrics["test_accuracy"] + 0.05
    assert {f"test_recall/{name}" for name in ("5", "6", "7", "8", "9")} <= set(metrics)
    # Trained on train + validation (150 + 373 images), at the trial's settings, its epochs
    # and batch size as the default refit rule makes them; the rule is recorded.
    assert run.data.params["lr"] == str(best.params["lr"])
    refit = refit_config(TrialConfig(epochs=3, batch_size=best.params["batch_size"]),
                         REFIT_RULE, trained_on=150, refit_on=523)
    assert (run.data.params["epochs"], run.data.params["batch_size"]) == (
        str(refit.epochs), str(refit.batch_size))
    assert run.data.tags["search.refit_rule"] == REFIT_RULE
    assert f"refit rule {REFIT_RULE}: 3 epochs of batch {best.params['batch_size']}" in out

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
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


def test_a_broken_gpu_during_a_refit_is_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_main(["--study", "digits", "--trials", "1", "--epochs", "1"]) == 0
    capsys.readouterr()

    def device_side_assert(*args: object, **kwargs: object) -> None:
        raise torch.AcceleratorError("CUDA error: device-side assert triggered")

    monkeypatch.setattr("objectives.train.fine_tune", device_side_assert)
    assert main(["--study", "digits"]) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "search.refit: error: CUDA error, the GPU's context is broken: CUDA error: device-side "
        "assert triggered; the refit run is ended FAILED: run the same command again"]
    refits = [r for r in client(workdir).search_runs(
        [client(workdir).get_experiment_by_name("digits").experiment_id])
        if r.data.tags.get("search.role") == "refit"]
    assert [r.info.status for r in refits] == ["FAILED"]


def test_the_search_never_touches_the_test_split(tmp_path: Path) -> None:
    from search.execution.trial import TrialRunner
    from search.tracking import Tracker
    from spaces import Settings
    from spaces.digits import STUDY

    task = load_digits_task(cache_dir=tmp_path / "cache", seed=0)
    guard = Untouchable()
    guarded = ImageData(task.data.train, task.data.val, guard,  # type: ignore[arg-type]
                        task.data.class_names, task.data.mean, task.data.std,
                        crop_padding=task.data.crop_padding)
    guarded_task = Task("guarded", guarded, task.make_model).to("cpu")
    model = fine_tune(TrialConfig(epochs=1), guarded_task).model
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
    # The guard was in the path all along: the trials trained on this very task, and the one
    # reader of a test split, refit's evaluation, trips it.
    assert runner.task.data.test is guard
    with pytest.raises(AssertionError, match="touched the test split"):
        evaluate(model, guarded_task, resolution=0)


def test_refit_tags_name_the_gpu_as_a_trial_does(monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study()
    study.set_user_attr("mlflow_parent_run_id", "parent")
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"mlflow_run_id": "run"}))
    chosen = study.trials[0]
    tags = _run_tags(study, chosen, "cpu")
    assert tags["device"] == "cpu" and "gpu" not in tags
    assert (tags["search.refit_of_trial"], tags["search.refit_of_run"],
            tags["mlflow.parentRunId"]) == ("0", "run", "parent")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    tags = _run_tags(study, chosen, "cuda")
    assert (tags["device"], tags["gpu"]) == ("cuda", "NVIDIA H200")
    assert tags.items() >= runtime.device_tags("cuda").items()


def test_evaluate_predicts_on_the_model_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The clean and corrupted images reach predict on the model's device (the meta device
    stands in for a GPU: it has tensors' shapes and devices, no data), labels on the CPU."""
    import objectives.train

    seen: list[tuple[torch.device, torch.device]] = []

    def predict(model: nn.Module, split: Split, task: Task, **_: Any) -> torch.Tensor:
        seen.append((split.x.device, split.y.device))
        return torch.zeros(len(split), task.data.num_classes)  # on the CPU, as predict's

    monkeypatch.setattr(objectives.train, "predict", predict)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    split = Split(x, torch.arange(6) % 3)
    task = Task("meta", ImageData(split, split, split, ("a", "b", "c"), (0.5,), (0.5,)),
                lambda seed: nn.Linear(1, 3))  # type: ignore[arg-type,return-value]
    metrics = evaluate(nn.Linear(1, 3, device="meta"), task, resolution=0)
    meta, cpu = torch.device("meta"), torch.device("cpu")
    assert seen == [(meta, cpu)] * (1 + len(CORRUPTIONS) * len(SEVERITIES))
    assert metrics["test_accuracy"] == pytest.approx(2 / 6)  # argmax 0, two labels are 0


def test_a_refit_logs_its_model_whatever_experiment_the_process_has_active(
    tmp_path: Path,
) -> None:
    # A notebook that set its own experiment, or a benchmark refitting several studies in one
    # process: the model still goes to the refit's own run, in the study's experiment.
    from search.tracking.models import RefitRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("someone-else")
    try:
        for study in ("first", "second"):
            run = RefitRun(uri, experiment=study, artifact_location=(tmp_path / "a").as_uri(),
                           run_name="refit", tags={}, params={})
            model_uri = run.log_model(nn.Linear(3, 2), torch.zeros(1, 3).numpy(), register=None)
            run.end("FINISHED")
            loaded = mlflow.pytorch.load_model(model_uri)
            assert isinstance(loaded, nn.Linear)
            found = mlflow.MlflowClient(uri).get_run(run.run_id)
            assert found.info.experiment_id == (
                mlflow.MlflowClient(uri).get_experiment_by_name(study).experiment_id)
    finally:
        mlflow.set_experiment("Default")
