"""The cifar10-transfer task: CIFAR-10 read from either on-disk format, the source classes only
for pretraining (cached), the target's exact split sizes, and one-line errors for bad folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from objectives import train as train_module
from objectives import transfer
from objectives.datasets import CIFAR10_CLASSES, read_cifar10
from objectives.errors import InputError
from tests.fake_data import write_cifar, write_image_folder


def _folder(root: Path, *, per_class: int = 12, test_per_class: int = 3,
            classes: tuple[str, ...] = CIFAR10_CLASSES) -> Path:
    return write_image_folder(root, classes=classes, per_class=per_class, size=(16, 16),
                              split=True, fmt="jpg", test_per_class=test_per_class)


def _classes_of(x: torch.Tensor) -> np.ndarray:
    """Each image's class by its nearest class colour: which folder it came from."""
    means = x.float().mean(dim=(2, 3)).numpy()
    colours = np.random.default_rng(12345).uniform(30, 225, size=(10, 3))
    return np.argmin(((means[:, None] - colours[None]) ** 2).sum(-1), axis=1)


def test_both_formats_give_cifar10s_classes_in_label_order(tmp_path: Path) -> None:
    parts, names = read_cifar10(_folder(tmp_path / "jpg"))
    assert names == list(CIFAR10_CLASSES)
    x, y = parts["train"]
    assert x.shape == (120, 3, 16, 16) and np.bincount(y).tolist() == [12] * 10
    assert (_classes_of(torch.from_numpy(x)) == y).all()  # "dog" images are label 5, etc.
    assert np.bincount(parts["test"][1]).tolist() == [3] * 10
    parts, names = read_cifar10(write_cifar(tmp_path / "batches", train=100, test=50))
    assert names == list(CIFAR10_CLASSES)
    assert parts["train"][0].shape == (100, 3, 32, 32) and len(parts["test"][1]) == 50


def test_target_task_holds_the_target_classes_only_in_exact_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real = transfer.pretrain_backbone

    def spy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            **kwargs: Any) -> dict[str, Any]:
        seen.update(train=_classes_of(torch.from_numpy(train_x)), labels=train_y,
                    test=_classes_of(torch.from_numpy(test_x)), **kwargs)
        return real(train_x, train_y, test_x, test_y, **kwargs)

    monkeypatch.setattr(transfer, "pretrain_backbone", spy)
    task = transfer.load_transfer_task(data_dir=_folder(tmp_path), cache_dir=None, seed=3,
                                       train_per_class=4, val_per_class=6, pretrain_epochs=1)
    # Pretraining saw the five source classes' training images, all of them, and their test
    # images for its own score; its seed is fixed whatever the study's.
    assert sorted(set(seen["train"])) == [0, 1, 2, 3, 4] and len(seen["train"]) == 60
    assert (seen["labels"] == seen["train"]).all()
    assert sorted(set(seen["test"])) == [0, 1, 2, 3, 4]
    assert seen["seed"] == transfer.PRETRAIN_SEED and seen["epochs"] == 1
    data = task.data
    assert data.class_names == transfer.TARGET_CLASSES
    for split, per_class in ((data.train, 4), (data.val, 6), (data.test, 3)):
        assert torch.bincount(split.y).tolist() == [per_class] * 5
        assert (_classes_of(split.x) == split.y.numpy() + 5).all()  # dog..truck, nothing else
    # Train and validation are disjoint draws from the training images; test is test/.
    train_rows = {bytes(x.numpy()) for x in data.train.x}
    assert not train_rows & {bytes(x.numpy()) for x in data.val.x}
    model = task.make_model(0)
    assert model.head.out_features == 5 and len(model.stages) == 5
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


def test_seed_changes_the_draw_not_the_pretrained_backbone(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "data")

    def load(seed: int) -> Any:
        return transfer.load_transfer_task(data_dir=folder, cache_dir=tmp_path / "cache",
                                           seed=seed, train_per_class=4, val_per_class=6,
                                           pretrain_epochs=1)

    a, b = load(0), load(1)
    assert not torch.equal(a.data.train.x, b.data.train.x)
    assert torch.equal(a.data.test.x, b.data.test.x)
    stage = "stages.2.1.weight"
    assert torch.equal(a.make_model(0).state_dict()[stage], b.make_model(0).state_dict()[stage])
    assert a.data.mean == b.data.mean  # the source's statistics, as pretrained weights have


def test_the_backbone_is_pretrained_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = train_module.fine_tune

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "fine_tune", counting)
    folder = _folder(tmp_path / "data")
    for seed in (0, 1, 0):
        transfer.load_transfer_task(data_dir=folder, cache_dir=tmp_path / "cache", seed=seed,
                                    train_per_class=4, val_per_class=6, pretrain_epochs=1)
    assert calls == ["cifar10-source"]


@pytest.mark.parametrize("problem, expected", [
    ("no class", "has no class folder 'deer': it needs all ten"),
    ("no test", "has no test/ split"),
    ("nothing", "no CIFAR-10 in"),
    ("too few", "class 'dog' has 12 training images"),
])
def test_a_folder_that_cannot_be_the_task_is_one_line(tmp_path: Path, problem: str,
                                                      expected: str) -> None:
    root = tmp_path / "data"
    if problem == "no class":
        _folder(root, classes=tuple(c for c in CIFAR10_CLASSES if c != "deer"))
    elif problem == "no test":
        write_image_folder(root / "train", classes=CIFAR10_CLASSES, per_class=2, size=(16, 16))
    elif problem == "nothing":
        root.mkdir()
    else:
        _folder(root)
    with pytest.raises(InputError) as caught:
        transfer.load_transfer_task(data_dir=root, cache_dir=None, pretrain_epochs=1)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
