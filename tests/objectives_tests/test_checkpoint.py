from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from objectives.checkpoint import load_checkpoint, save_checkpoint
from objectives.data import Task
from objectives.models import StagedNet
from objectives.train import FineTuneResult, fine_tune
from tests.support import quadrants_task, train_config

TIMING = {"epoch_seconds", "images_per_second"}


class Killed(Exception):
    """Stands for a worker killed while epoch 3 was being reported: the checkpoint, written
    after each report, holds epoch 2."""


def _metrics(result: FineTuneResult) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in result.history]


def _assert_same_model(a: FineTuneResult, b: FineTuneResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _kill_at_3(epoch: int, metrics: dict[str, float]) -> None:
    if epoch == 3:
        raise Killed


@pytest.fixture(scope="module")
def task() -> Task:
    return quadrants_task()


@pytest.fixture(scope="module")
def augmented() -> Task:
    return quadrants_task(crop_padding=1, flip=True)  # both augmentations draw from the generator


@pytest.mark.parametrize("changes", [
    {"optimizer": "adamw", "weight_decay": 1e-2},
    {"optimizer": "momentum", "lr": 0.05, "nesterov": True},
    {"optimizer": "adam", "penalty": "l2_sp", "penalty_lambda": 1e-2, "freeze_depth": 1},
])
def test_resumed_run_equals_the_uninterrupted_one(
    augmented: Task, tmp_path: Path, changes: dict[str, object]
) -> None:
    config = train_config(epochs=4, warmup_epochs=1, **changes)
    whole = fine_tune(config, augmented)
    path = tmp_path / "trial.pt"

    first: list[int] = []
    with pytest.raises(Killed):
        fine_tune(config, augmented, checkpoint=path,
                  on_epoch=lambda e, m: (first.append(e), _kill_at_3(e, m)))
    assert first == [1, 2, 3] and path.exists()

    calls: list[tuple[int, dict[str, float]]] = []
    resumed = fine_tune(config, augmented, checkpoint=path,
                        on_epoch=lambda e, m: calls.append((e, m)))
    assert resumed.resumed_from == 2 and whole.resumed_from == 0
    assert [e for e, _ in calls] == [3, 4]  # the epoch whose report was cut short: again
    assert [m for _, m in calls] == resumed.history[2:]
    assert _metrics(resumed) == _metrics(whole)
    _assert_same_model(resumed, whole)
    assert resumed.val_logits is not None and whole.val_logits is not None
    assert torch.equal(resumed.val_logits, whole.val_logits)
    assert path.exists()  # removing it is the caller's job


def test_l2_sp_anchor_comes_from_the_checkpoint(augmented: Task, tmp_path: Path) -> None:
    # The resumed run is given a model whose "pretrained" backbone has moved: only an anchor
    # read from the checkpoint (the weights the run started from) keeps it on course.
    config = train_config(epochs=3, penalty="l2_sp", penalty_lambda=1e-1)
    whole = fine_tune(config, augmented)
    path = tmp_path / "trial.pt"
    with pytest.raises(Killed):
        fine_tune(config, augmented, checkpoint=path, on_epoch=_kill_at_3)

    def moved_model(seed: int) -> StagedNet:
        model = augmented.make_model(seed)
        with torch.no_grad():
            for p in model.backbone_parameters():
                p.add_(0.5)
        return model

    moved = Task(augmented.name, augmented.data, moved_model)
    resumed = fine_tune(config, moved, checkpoint=path)
    assert resumed.resumed_from == 2
    assert _metrics(resumed) == _metrics(whole)
    _assert_same_model(resumed, whole)


def test_finished_run_returns_at_once(task: Task, tmp_path: Path) -> None:
    config = train_config(epochs=2)
    path = tmp_path / "trial.pt"
    done = fine_tune(config, task, checkpoint=path)
    calls: list[int] = []
    again = fine_tune(config, task, checkpoint=path, on_epoch=lambda e, m: calls.append(e))
    assert calls == [] and again.resumed_from == 2
    assert again.history == done.history  # timings included: nothing was run again
    _assert_same_model(again, done)
    assert again.val_logits is not None and done.val_logits is not None
    assert torch.equal(again.val_logits, done.val_logits)
    assert again.val_targets is not None and torch.equal(again.val_targets, task.data.val.y)


def test_checkpoint_of_another_config_is_refused(task: Task, tmp_path: Path) -> None:
    path = tmp_path / "trial.pt"
    fine_tune(train_config(epochs=1), task, checkpoint=path)
    with pytest.raises(ValueError, match=r"another config \(it differs in lr, seed\)"):
        fine_tune(train_config(epochs=1, lr=0.5, seed=3), task, checkpoint=path)


def test_corrupt_checkpoint_is_a_value_error(task: Task, tmp_path: Path) -> None:
    path = tmp_path / "trial.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match=r"cannot be read: .*delete it to start the trial over"):
        fine_tune(train_config(), task, checkpoint=path)
    torch.save([1, 2], path)  # readable, but not a checkpoint
    with pytest.raises(ValueError, match="cannot be read"):
        fine_tune(train_config(), task, checkpoint=path)
    torch.save({"epoch": 1}, path)
    with pytest.raises(ValueError, match=r"cannot be read: it lacks .*'model'"):
        fine_tune(train_config(), task, checkpoint=path)


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "trial.pt"
    assert load_checkpoint(path) is None
    save_checkpoint(path, {"a": torch.arange(3), "b": [1.5, "x"], "c": None})
    save_checkpoint(path, {"a": torch.arange(4)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["trial.pt"]
    state = load_checkpoint(path)
    assert state is not None and torch.equal(state["a"], torch.arange(4))

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    # A save that fails half-way keeps the previous file whole and removes its temporary.
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"a": torch.zeros(10_000), "z": Unpicklable()})
    assert sorted(p.name for p in path.parent.iterdir()) == ["trial.pt"]
    state = load_checkpoint(path)
    assert state is not None and torch.equal(state["a"], torch.arange(4))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_during_the_save_comes_after_it_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    # Delivered inside torch.save's write, the interrupt came out of torch as a RuntimeError
    # ("unexpected pos"): the trial failed as an error and the stopped worker went on.
    real_save = torch.save

    class InterruptedWrite:  # the file torch writes to; Ctrl-C/SIGTERM lands in its 2nd write
        def __init__(self, file: Any) -> None:
            self.file, self.writes = file, 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes == 2:
                os.kill(os.getpid(), signum)
            return self.file.write(data)

        def flush(self) -> None:
            self.file.flush()

    def raise_interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt  # what search.run does with SIGTERM

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, InterruptedWrite(f)))
    previous = signal.signal(signum, raise_interrupt)
    path = tmp_path / "trial.pt"
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"a": torch.arange(1000), "epoch": 3})
    finally:
        signal.signal(signum, previous)
    state = load_checkpoint(path)  # written whole before the interrupt was raised
    assert state is not None and state["epoch"] == 3 and torch.equal(state["a"],
                                                                      torch.arange(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial.pt"]


@pytest.mark.slow
def test_no_checkpoint_changes_nothing(task: Task, tmp_path: Path) -> None:
    config = train_config(epochs=2, penalty="l2_sp", penalty_lambda=1e-3)
    plain = fine_tune(config, task)
    saved = fine_tune(config, task, checkpoint=tmp_path / "trial.pt")
    assert plain.resumed_from == 0 and saved.resumed_from == 0
    assert _metrics(plain) == _metrics(saved)
    _assert_same_model(plain, saved)



@pytest.mark.parametrize("labelled", [True, False], ids=["device-type", "legacy"])
def test_a_checkpoint_from_another_device_type_resumes(
    augmented: Task, tmp_path: Path, labelled: bool,
) -> None:
    """A retry that moved from a GPU node to a CPU one finds a CUDA generator state (Philox:
    16 bytes) in the checkpoint, which a CPU generator cannot take: it resumes, reseeded."""
    config = train_config(epochs=3)
    path = tmp_path / "trial.pt"
    with pytest.raises(Killed):
        fine_tune(config, augmented, checkpoint=path, on_epoch=_kill_at_3)
    state = load_checkpoint(path)
    assert state is not None and state["device_type"] == "cpu"
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # as torch.cuda's get_state()
    if labelled:
        state["device_type"] = "cuda"
    else:
        del state["device_type"]  # a checkpoint written before the field existed
    save_checkpoint(path, state)
    with pytest.warns(RuntimeWarning, match="generator is reseeded"):
        resumed = fine_tune(config, augmented, checkpoint=path)
    assert resumed.resumed_from == 2
    assert len(resumed.history) == 3
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())
