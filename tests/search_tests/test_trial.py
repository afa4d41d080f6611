"""The trial runner's outcomes, each checked in Optuna and in MLflow: pruned, failed, complete."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task
from objectives.interrupts import clear_stop, request_stop
from objectives.models import StagedNet, new_head, small_cnn
from search.execution.trial import TrialRunner
from search.tracking import Tracker
from spaces.base import Settings, Study

pytestmark = pytest.mark.slow  # real searches, processes or servers


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


@pytest.mark.parametrize("storage", ["journal", "rdb"])
@pytest.mark.parametrize("directions", [["maximize"], ["minimize"], ["maximize", "minimize"]])
def test_best_so_far_compares_with_the_completed_trials(
        tmp_path: Path, storage: str, directions: list[str]) -> None:
    url = (optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "j.log"))) if storage == "journal" else f"sqlite:///{tmp_path / 'db'}")
    study = optuna.create_study(storage=url, directions=directions)
    sign = 1 if directions[0] == "maximize" else -1
    first = study.ask()
    assert TrialRunner._is_best(first, 0.0)  # nothing completed yet
    values = [0.5 * sign, 0.1][:len(directions)]
    study.tell(first, values if len(values) > 1 else values[0])
    study.tell(study.ask(), state=TrialState.FAIL)
    trial = study.ask()
    assert TrialRunner._is_best(trial, 0.7 * sign)
    assert not TrialRunner._is_best(trial, 0.5 * sign)  # a tie is not better
    assert not TrialRunner._is_best(trial, 0.2 * sign)


def test_a_stop_whose_interrupt_was_lost_interrupts_the_trial_at_its_next_epoch(
        tmp_path: Path) -> None:
    # SIGTERM came and its KeyboardInterrupt was lost (raised in a C++ callback or an at-fork
    # hook): the stop stays asked, and the trial ends as interrupted would, retry queued.
    runner, tracker, client = make_runner(tmp_path)
    study = optuna.create_study(direction="maximize")
    request_stop()
    try:
        with pytest.raises(KeyboardInterrupt):
            study.optimize(runner, n_trials=2)
    finally:
        clear_stop()
    tracker.close()
    trial, retry = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert list(trial.intermediate_values) == [1]  # stopped after its first epoch
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
    assert the_run(client, trial).info.status == "KILLED"


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
        raise ValueError("weights file is truncated")

    broken = Task("broken", task.data, exploding_model)
    runner, tracker, client = make_runner(tmp_path, task=broken)
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=2, catch=(Exception,))
    tracker.close()
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # goes on
    trial = study.trials[0]
    assert trial.user_attrs["fail_reason"] == "ValueError: weights file is truncated"
    assert runner.broken is None
    run = the_run(client, trial)
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == "FAIL"


@pytest.mark.parametrize("error", [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be ..."),
])
def test_a_sticky_cuda_error_fails_the_trial_and_stops_the_process_search(
    tmp_path: Path, error: Exception,
) -> None:
    """After a sticky CUDA error every later CUDA call of the process fails: the trial fails
    with its reason, and no further trial starts in this process (it must be replaced)."""
    task = tiny_task()

    def broken_device(seed: int) -> StagedNet:
        raise error

    runner, tracker, client = make_runner(tmp_path, task=Task("gpu", task.data, broken_device))
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=3, catch=(Exception,))
    tracker.close()
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # stopped after one trial
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason.startswith("CUDA error, the worker's CUDA context is broken: CUDA error: ")
    assert runner.broken == reason
    assert the_run(client, study.trials[0]).data.tags["optuna.fail_reason"] == reason
    # The configuration may be what broke the device: it is not queued again.
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


class Watched:
    """Weak references to every model a task builds: alive or freed, without a collection."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.models: list[weakref.ref[StagedNet]] = []

    def make_model(self, seed: int) -> StagedNet:
        model = self.task.make_model(seed)
        self.models.append(weakref.ref(model))
        return model


@pytest.fixture
def no_gc():  # noqa: ANN201
    """The cyclic garbage collector off: what is freed must be freed by reference counting."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_a_pruned_trials_model_is_freed_at_once(tmp_path: Path, no_gc: None) -> None:
    watched = Watched(tiny_task())
    task = Task("watched", watched.task.data, watched.make_model)
    runner, tracker, _ = make_runner(tmp_path, task=task)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(
        lower=2.0))
    study.optimize(runner, n_trials=2, gc_after_trial=False)
    tracker.close()
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    # Optuna still holds the last trial's exception, and with it the training frames: their
    # model, gradients and optimizer state must already be gone.
    assert [ref() for ref in watched.models] == [None, None]


def out_of_memory_mid_training(task: Task, error: Exception) -> tuple[Task, Watched]:
    """A task whose first model runs out of memory in its second training step."""
    watched = Watched(task)
    calls = {"forward": 0}

    def make_model(seed: int) -> StagedNet:
        model = watched.make_model(seed)
        if len(watched.models) == 1:

            def before_forward(module: torch.nn.Module, args: object) -> None:
                calls["forward"] += 1
                if calls["forward"] == 2:
                    raise error

            model.register_forward_pre_hook(before_forward)  # holds no reference to model
        return model

    return Task("hungry", task.data, make_model), watched


def wrapped_by_inductor() -> Exception:
    from torch._inductor.exc import InductorError

    inner = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return InductorError(inner, None)


@pytest.mark.parametrize("make_error", [
    lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    wrapped_by_inductor,  # raised through torch.compile's backend
], ids=["plain", "through-inductor"])
def test_out_of_memory_fails_the_trial_frees_it_and_retries_it(
    tmp_path: Path, make_error: Callable[[], Exception], no_gc: None,
) -> None:
    task, watched = out_of_memory_mid_training(tiny_task(), make_error())
    runner, tracker, client = make_runner(tmp_path, task=task)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 5e-3})
    study.optimize(runner, n_trials=2, catch=(Exception,), gc_after_trial=False)
    tracker.close()
    first, retry = study.trials
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == (
        "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB")
    assert the_run(client, first).data.tags["optuna.fail_reason"].startswith("out of memory")
    # Freed by the time the next trial began, without the cyclic garbage collector.
    assert watched.models[0]() is None
    # Not scored: the same configuration is tried again (a neighbour may have held the memory).
    assert retry.system_attrs["failed_trial"] == first.number
    assert retry.params == first.params
    assert retry.state == TrialState.COMPLETE
    assert runner.broken is None


def test_compiled_trials_record_that_they_stayed_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("objectives.compiled.BACKEND", "eager")  # Dynamo's graphs, no codegen
    runner, tracker, client = make_runner(tmp_path)
    runner.compile = True
    study = optuna.create_study(direction="maximize")
    study.optimize(runner, n_trials=1)
    tracker.close()
    trial = study.trials[0]
    assert trial.user_attrs["compile"] == "compiled"
    assert the_run(client, trial).data.tags["search.compile"] == "compiled"


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


@pytest.mark.parametrize(("error", "state", "reason", "killed"), [
    (optuna.TrialPruned("pruned at epoch 3"), "PRUNED", None, False),
    (KeyboardInterrupt(), "FAIL", "interrupted", True),
    (ValueError("lr must be a positive number"), "FAIL",
     "ValueError: lr must be a positive number", False),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"), "FAIL",
     "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB", False),
])
def test_each_way_training_ends_is_one_outcome(error: BaseException, state: str,
                                               reason: str | None, killed: bool) -> None:
    from search.execution.trial import ended_by

    outcome = ended_by(error, 3)
    assert outcome is not None
    assert (outcome.state, outcome.killed) == (state, killed)
    assert outcome.reason is None if reason is None else outcome.reason.startswith(reason)
    assert outcome.pruned_epoch == (3 if state == "PRUNED" else None)
    assert ended_by(SystemExit(0), 3) is None  # the process is ending: nothing recorded
