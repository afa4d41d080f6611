"""The trial runner's outcomes, each checked in Optuna and in MLflow: pruned, failed, complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task
from objectives.models import StagedNet, new_head, small_cnn
from search.tracking import Tracker
from search.trial import TrialRunner
from spaces.base import Settings, Study


def tiny_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.randint(0, 60, (120, 1, 8, 8), generator=generator, dtype=torch.uint8)
    for c in range(3):  # a learnable pattern: the class lights up one band of rows
        x[y == c, :, 2 * c : 2 * c + 2, :] += 180
    split = Split(x, y)

    def make_model(seed: int) -> StagedNet:
        model = small_cnn(3, width=8)
        new_head(model, 3, seed=seed)
        return model

    data = ImageData(split, split, split, ("a", "b", "c"), (0.3,), (0.3,))
    return Task("tiny", data, make_model)


def fixed_space(trial: optuna.Trial, settings: Settings) -> TrialConfig:
    lr = trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    return TrialConfig(optimizer="adam", lr=lr, epochs=settings.epochs, seed=settings.seed,
                       batch_size=32)


def broken_space(trial: optuna.Trial, settings: Settings) -> TrialConfig:
    trial.suggest_int("freeze_depth", 0, 3)
    raise KeyError("a bug in the user's space")


def make_runner(tmp_path: Path, space=fixed_space, task: Task | None = None):  # noqa: ANN001
    spec = Study(name="tiny", space=space, load_task=lambda _: task or tiny_task(), epochs=3,
                 trials=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri=uri, experiment="tiny",
                      artifact_location=(tmp_path / "artifacts").as_uri())
    parent = tracker.study_run(run_id=None, name="tiny", params={}, tags={"search.role": "study"})
    runner = TrialRunner(study=spec, task=task or tiny_task(), tracker=tracker,
                         parent_run_id=parent, settings=Settings(epochs=3, seed=0))
    return runner, tracker, MlflowClient(uri)


@pytest.fixture(autouse=True)
def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def the_run(client: MlflowClient, trial: optuna.trial.FrozenTrial):
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.trial_number"] == str(trial.number)
    return run


def test_pruned_trial_records_its_epoch(tmp_path: Path) -> None:
    runner, tracker, client = make_runner(tmp_path)
    # Accuracy is never above 2: every trial is pruned at its first report.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(
        lower=2.0))
    study.optimize(runner, n_trials=1)
    tracker.close()
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["pruned_epoch"] == 1
    run = the_run(client, trial)
    assert run.info.status == "FINISHED"
    assert run.data.tags["optuna.state"] == "PRUNED"
    assert run.data.tags["optuna.pruned_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.json" in artifacts


def test_complete_trial_learns_and_logs_its_evaluation(tmp_path: Path) -> None:
    runner, tracker, client = make_runner(tmp_path)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 1e-2})
    study.optimize(runner, n_trials=1)
    tracker.close()
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.value > 0.6  # the bands are easy: well above chance (1/3)
    run = the_run(client, trial)
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(trial.value)
    report = Path(client.download_artifacts(run.info.run_id, "classification_report.txt",
                                            str(tmp_path)))
    assert "macro avg" in report.read_text()
    csv = Path(client.download_artifacts(run.info.run_id, "confusion_matrix.csv",
                                         str(tmp_path))).read_text().splitlines()
    counts = np.array([[int(v) for v in row.split(",")[1:]] for row in csv[1:]])
    assert counts.sum() == 120  # every validation image counted once
    assert np.trace(counts) / counts.sum() == pytest.approx(trial.value)


def test_a_broken_space_fails_the_trial_with_its_reason(tmp_path: Path) -> None:
    runner, tracker, client = make_runner(tmp_path, space=broken_space)
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=2, catch=(Exception,))
    tracker.close()
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    for trial in study.trials:
        reason = trial.user_attrs["fail_reason"]
        assert reason == "in the search space: KeyError: \"a bug in the user's space\""
        run = the_run(client, trial)
        assert run.info.status == "FAILED"
        assert run.data.tags["optuna.fail_reason"] == reason
        assert run.data.params["freeze_depth"] == str(trial.params["freeze_depth"])


def test_an_exception_in_training_fails_the_trial_and_ends_its_run(tmp_path: Path) -> None:
    task = tiny_task()

    def exploding_model(seed: int) -> StagedNet:
        raise RuntimeError("CUDA error: device-side assert triggered")

    broken = Task("broken", task.data, exploding_model)
    runner, tracker, client = make_runner(tmp_path, task=broken)
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=1, catch=(Exception,))
    tracker.close()
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == (
        "RuntimeError: CUDA error: device-side assert triggered")
    run = the_run(client, trial)
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == "FAIL"


def test_out_of_memory_fails_the_trial_frees_it_and_the_search_goes_on(
    tmp_path: Path,
) -> None:
    task = tiny_task()
    built: list[StagedNet] = []

    def hungry_model(seed: int) -> StagedNet:
        model = task.make_model(seed)
        built.append(model)
        if len(built) == 1:  # the first trial runs out of memory as its model is built
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return model

    runner, tracker, client = make_runner(tmp_path, task=Task("hungry", task.data,
                                                               hungry_model))
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=2, catch=(Exception,))
    tracker.close()
    first, second = study.trials
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == (
        "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB")
    assert the_run(client, first).data.tags["optuna.fail_reason"].startswith("out of memory")
    assert second.state == TrialState.COMPLETE  # the next trial ran as usual


def test_writer_failures_are_reported_not_raised(tmp_path: Path) -> None:
    runner, tracker, client = make_runner(tmp_path)
    run = tracker.trial_run(parent_run_id="no-such-parent", trial_number=7, params={"a": 1},
                            tags={})
    assert run.run_id is not None
    # Finishing with an artifact that cannot be rendered: recorded as an error, run ends.
    run.add_artifact("broken.txt", int)  # int() returns 0: neither str nor bytes
    run.finish("COMPLETE")
    tracker.flush()
    assert any("log artifacts failed" in e for e in tracker.errors)
    tracker.close()
    ended = client.get_run(run.run_id)
    assert ended.data.params == {"a": "1"}
    assert ended.info.status == "FINISHED"  # the broken artifact did not leave it RUNNING
    assert ended.data.tags["optuna.state"] == "COMPLETE"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_the_writer_process_stays_free_of_pytorch(tmp_path: Path) -> None:
    runner, tracker, _ = make_runner(tmp_path)
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=1)
    tracker.flush()
    maps = Path(f"/proc/{tracker.writer._process.pid}/maps").read_text()
    tracker.close()
    assert "libtorch" not in maps  # nothing it is sent needs PyTorch to unpickle
