from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from joblib import Memory
from sklearn.datasets import load_digits

import objectives.train
from objectives.data import Split, Task, channel_stats
from objectives.digits import load_digits_task, pretrain_backbone

PRETRAIN_EPOCHS = 1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="module")
def task(cache_dir: Path) -> Task:
    return load_digits_task(cache_dir=cache_dir, pretrain_epochs=PRETRAIN_EPOCHS)


@pytest.fixture
def no_pretraining(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call that pretrains (rather than reading the cache) fails."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pretrained again instead of reading the cache")

    monkeypatch.setattr(objectives.train, "fine_tune", refuse)


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(bytes(image.flatten().tolist()) for image in x)


def _target_images() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    keep = digits.target >= 5
    x = np.round(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
    return x, digits.target[keep]


def _splits(task: Task) -> tuple[Split, Split, Split]:
    return task.data.train, task.data.val, task.data.test


def test_shapes_labels_and_names(task: Task) -> None:
    data = task.data
    assert task.name == "digits"
    assert data.class_names == ("5", "6", "7", "8", "9")
    assert data.num_classes == 5
    for split in _splits(task):
        assert split.x.dtype == torch.uint8
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.y.dtype == torch.int64
        assert set(split.y.tolist()) == {0, 1, 2, 3, 4}
    assert data.crop_padding == 1
    assert not data.flip  # a mirrored digit is another shape


def test_train_has_thirty_images_per_class(task: Task) -> None:
    counts = torch.bincount(task.data.train.y, minlength=5).tolist()
    assert counts == [30, 30, 30, 30, 30]


def test_splits_are_disjoint_and_cover_the_target_digits(task: Task) -> None:
    x, _ = _target_images()
    everything = torch.cat([s.x for s in _splits(task)])
    assert len(everything) == len(x)
    # The same multiset of images: no image used twice, none left out.
    assert _rows(everything) == _rows(torch.from_numpy(x[:, None]))
    assert len(task.data.val) == len(task.data.test) == 373


def test_labels_are_the_target_digits_relabelled(task: Task) -> None:
    x, y = _target_images()
    by_digit = {d: set(_rows(torch.from_numpy(x[y == d][:, None]))) for d in range(5, 10)}
    for split in _splits(task):
        for image, label in zip(split.x, split.y, strict=True):
            assert bytes(image.flatten().tolist()) in by_digit[int(label) + 5]


def test_val_and_test_are_stratified(task: Task) -> None:
    _, y = _target_images()
    overall = np.bincount(y - 5) / len(y)
    for split in (task.data.val, task.data.test):
        share = torch.bincount(split.y, minlength=5).numpy() / len(split)
        assert np.allclose(share, overall, atol=0.01), share


def test_normalization_stats_come_from_train(task: Task) -> None:
    mean, std = channel_stats(task.data.train.x)
    assert task.data.mean == pytest.approx(mean)
    assert task.data.std == pytest.approx(std)


def test_deterministic_across_calls(task: Task, cache_dir: Path, no_pretraining: None) -> None:
    again = load_digits_task(cache_dir=cache_dir, pretrain_epochs=PRETRAIN_EPOCHS)
    for a, b in zip(_splits(task), _splits(again), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.data.mean == task.data.mean and again.data.std == task.data.std
    for (k, v), w in zip(task.make_model(0).state_dict().items(),
                         again.make_model(0).state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_backbone_is_cached_on_disk(task: Task, cache_dir: Path, no_pretraining: None) -> None:
    assert list(cache_dir.rglob("output.pkl")), "no joblib cache entry written"
    # With pretraining disabled, loading again only works from the cache.
    load_digits_task(cache_dir=cache_dir, pretrain_epochs=PRETRAIN_EPOCHS)


def _cached_backbone(cache_dir: Path) -> dict[str, np.ndarray]:
    cached = Memory(str(cache_dir), verbose=0).cache(pretrain_backbone)
    return cached(seed=0, epochs=PRETRAIN_EPOCHS)


def test_model_has_the_cached_backbone(task: Task, cache_dir: Path, no_pretraining: None) -> None:
    backbone = _cached_backbone(cache_dir)
    model = task.make_model(0)
    state = model.state_dict()
    stage_keys = {k for k in state if k.startswith("stages.")}
    assert stage_keys == set(backbone)
    for key, value in backbone.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key
    # The running statistics were pretrained too, not left at their initial values.
    assert not torch.equal(state["stages.0.1.running_mean"], torch.zeros_like(
        state["stages.0.1.running_mean"]))


def test_head_depends_on_the_seed_only(task: Task) -> None:
    a, b, c = task.make_model(0), task.make_model(0), task.make_model(1)
    assert a.head.out_features == 5
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    assert not torch.equal(a.head.weight, c.head.weight)
    for (k, v), w in zip(a.stages.state_dict().items(), c.stages.state_dict().values(),
                         strict=True):
        assert torch.equal(v, w), k


def test_models_do_not_share_the_backbone(task: Task, cache_dir: Path,
                                          no_pretraining: None) -> None:
    # Fine-tuning one trial's model in place must not leak into the next trial's.
    first = task.make_model(0)
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
    second = task.make_model(0)
    backbone = _cached_backbone(cache_dir)
    for key, value in backbone.items():
        assert torch.equal(second.state_dict()[key], torch.from_numpy(value)), key


def test_task_model_accepts_task_images(task: Task) -> None:
    model = task.make_model(0).eval()
    with torch.no_grad():
        logits = model(task.data.normalize(task.data.val.x[:16]))
    assert logits.shape == (16, 5) and torch.isfinite(logits).all()


def test_objectives_import_neither_optuna_nor_mlflow() -> None:
    code = (
        "import objectives.train, objectives.digits, objectives.data, objectives.models, sys; "
        "bad = [m for m in ('optuna', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
