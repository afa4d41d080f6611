from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision.datasets import utils as tv_utils

import objectives.datasets
from objectives.data import Split
from objectives.datasets import DATASETS, MAX_SIDE, Splits, load_dataset
from objectives.errors import InputError
from tests.fake_data import (
    cifar_arrays,
    fake_images,
    mnist_arrays,
    write_cifar,
    write_image_folder,
    write_mnist,
)

CIFAR10 = tv_datasets.CIFAR10


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every download fails as it would offline; the list records the (url, md5) tried."""
    tried: list[tuple[str, str]] = []

    def offline(url: str, download_root: object, **kwargs: object) -> None:
        tried.append((url, str(kwargs.get("md5"))))
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    return tried


def _rows(x: torch.Tensor | np.ndarray) -> list[bytes]:
    return [bytes(image) for image in np.asarray(x).reshape(len(x), -1)]


def _check_splits(splits: Splits, *, channels: int, size: tuple[int, int], classes: int) -> None:
    for split in (splits.train, splits.val, splits.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (channels, *size)
        assert split.x.is_contiguous() and split.y.is_contiguous()
        assert split.x.device.type == "cpu"
        assert 0 <= int(split.y.min()) and int(split.y.max()) < classes
    assert len(splits.class_names) == classes
    assert set(splits.val.y.tolist()) == set(range(classes))  # stratified: every class in val


def _check_val(splits: Splits, x_train: np.ndarray, y_train: np.ndarray, fraction: float) -> None:
    """val is a stratified `fraction` of what was written as train, disjoint from train."""
    train_rows, val_rows = _rows(splits.train.x), _rows(splits.val.x)
    assert not set(train_rows) & set(val_rows)
    assert sorted(train_rows + val_rows) == sorted(_rows(x_train))
    assert len(splits.val) == round(fraction * len(y_train))
    val_counts = np.bincount(splits.val.y.numpy(), minlength=int(y_train.max()) + 1)
    expected = np.bincount(y_train) * fraction
    assert np.all(np.abs(val_counts - expected) <= 1)
    # Labels travel with their images.
    label_of = dict(zip(_rows(x_train), y_train.tolist(), strict=True))
    for split in (splits.train, splits.val):
        assert [label_of[row] for row in _rows(split.x)] == split.y.tolist()


def _same(a: Split, b: Split) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def _one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: cifar10, cifar100") as error:
        load_dataset("imagenet", tmp_path)
    assert all(name in str(error.value) for name in DATASETS)


# --- CIFAR -----------------------------------------------------------------------------------


def test_cifar10_round_trip(tmp_path: Path) -> None:
    write_cifar(tmp_path, train=300, test=100)
    splits = load_dataset("cifar10", tmp_path, download=False)
    _check_splits(splits, channels=3, size=(32, 32), classes=10)
    assert splits.class_names == tuple(f"class{c:02d}" for c in range(10))
    x_train, y_train, x_test, y_test = cifar_arrays(train=300, test=100)
    assert np.array_equal(splits.test.x.numpy(), x_test)  # the official test split, in order
    assert np.array_equal(splits.test.y.numpy(), y_test)
    _check_val(splits, x_train, y_train, 0.1)


def test_cifar100(tmp_path: Path) -> None:
    write_cifar(tmp_path, classes=100, train=1000, test=200)
    splits = load_dataset("cifar100", tmp_path, download=False)
    _check_splits(splits, channels=3, size=(32, 32), classes=100)
    x_train, y_train, x_test, y_test = cifar_arrays(classes=100, train=1000, test=200)
    assert np.array_equal(splits.test.x.numpy(), x_test)
    assert np.array_equal(splits.test.y.numpy(), y_test)
    _check_val(splits, x_train, y_train, 0.1)


def test_val_split_is_seeded(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    first = load_dataset("cifar10", tmp_path, seed=0)
    again = load_dataset("cifar10", tmp_path, seed=0)
    other = load_dataset("cifar10", tmp_path, seed=1)
    assert _same(first.val, again.val) and _same(first.train, again.train)
    assert not _same(first.val, other.val)
    assert _same(first.test, other.test)
    wider = load_dataset("cifar10", tmp_path, val_fraction=0.2)
    assert len(wider.val) == 60 and len(wider.train) == 240


def test_missing_cifar_without_download(tmp_path: Path, no_network: list) -> None:
    with pytest.raises(InputError) as error:
        load_dataset("cifar10", tmp_path, download=False)
    message = _one_line(error)
    assert str(tmp_path / CIFAR10.base_folder / "data_batch_1") in message
    assert CIFAR10.url in message and "--data-dir" in message and "downloads are off" in message
    assert no_network == []


def test_missing_cifar_when_the_download_fails(tmp_path: Path, no_network: list) -> None:
    with pytest.raises(InputError) as error:
        load_dataset("cifar100", tmp_path)
    message = _one_line(error)
    cifar100 = tv_datasets.CIFAR100
    assert str(tmp_path / cifar100.base_folder / "train") in message
    assert cifar100.url in message and "--data-dir" in message
    assert "name resolution" in message  # why the download failed
    assert no_network == [(cifar100.url, cifar100.tgz_md5)]


def test_cifar_download_fills_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(url: str, download_root: str | Path, **kwargs: object) -> None:
        calls.append((url, Path(download_root), kwargs["filename"], kwargs["md5"]))
        write_cifar(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    splits = load_dataset("cifar10", tmp_path)
    assert calls == [(CIFAR10.url, tmp_path, CIFAR10.filename, CIFAR10.tgz_md5)]
    assert len(splits.test) == 100


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a pickle at all")


def _bad_labels(path: Path) -> None:
    with open(path, "rb") as f:
        entry = pickle.load(f)
    entry[b"labels"] = [12] * len(entry[b"labels"])
    with open(path, "wb") as f:
        pickle.dump(entry, f)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _bad_labels])
def test_corrupt_cifar_batch(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    write_cifar(tmp_path)
    batch = tmp_path / CIFAR10.base_folder / "data_batch_3"
    damage(batch)
    with pytest.raises(InputError) as error:
        load_dataset("cifar10", tmp_path)
    message = _one_line(error)
    assert str(batch) in message and "delete it and download it again" in message


# --- MNIST -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, variant: str, gz: bool) -> None:
    write_mnist(tmp_path, variant=variant, gz=gz)
    raw = tmp_path / ("MNIST" if variant == "mnist" else "FashionMNIST") / "raw"
    assert (raw / "train-images-idx3-ubyte.gz").exists() == gz
    splits = load_dataset(variant, tmp_path, download=False)
    _check_splits(splits, channels=1, size=(28, 28), classes=10)
    cls = tv_datasets.MNIST if variant == "mnist" else tv_datasets.FashionMNIST
    assert splits.class_names == tuple(cls.classes)
    x_train, y_train, x_test, y_test = mnist_arrays()
    assert np.array_equal(splits.test.x.numpy()[:, 0], x_test)
    assert np.array_equal(splits.test.y.numpy(), y_test)
    _check_val(splits, x_train, y_train, 0.1)


def test_mnist_matches_torchvisions_reader(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    splits = load_dataset("mnist", tmp_path)
    reference = tv_datasets.MNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(splits.test.x[:, 0], reference.data)
    assert torch.equal(splits.test.y, reference.targets)


def test_missing_mnist_tries_every_mirror(tmp_path: Path, no_network: list) -> None:
    with pytest.raises(InputError) as error:
        load_dataset("mnist", tmp_path)
    message = _one_line(error)
    mnist = tv_datasets.MNIST
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert mnist.mirrors[0] + "train-images-idx3-ubyte.gz" in message
    assert f"into {tmp_path / 'MNIST' / 'raw'} in the data directory {tmp_path} (--data-dir)" \
        in message
    assert no_network == [(m + mnist.resources[0][0], mnist.resources[0][1])
                          for m in mnist.mirrors]


def test_missing_fashion_mnist_without_download(tmp_path: Path) -> None:
    write_mnist(tmp_path, variant="fashion_mnist")
    labels = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.unlink()
    with pytest.raises(InputError) as error:
        load_dataset("fashion_mnist", tmp_path, download=False)
    message = _one_line(error)
    assert str(labels) in message and "--data-dir" in message
    assert tv_datasets.FashionMNIST.mirrors[0] in message


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_mnist(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    images = tmp_path / "MNIST" / "raw" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    _truncate(images)
    with pytest.raises(InputError) as error:
        load_dataset("mnist", tmp_path)
    message = _one_line(error)
    assert str(images) in message and "download it again" in message


# --- image folders ---------------------------------------------------------------------------


def _folder_images(folder: Path) -> list[bytes]:
    return [bytes(np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1))
            for p in sorted(folder.rglob("*.png"))]


def test_image_folder_without_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=("dog", "cat", "frog"), per_class=20)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    splits = load_dataset("imagefolder", tmp_path)
    _check_splits(splits, channels=3, size=(32, 32), classes=3)
    assert splits.class_names == ("cat", "dog", "frog")  # sorted
    assert len(splits.test) == 12 and len(splits.val) == 5 and len(splits.train) == 43
    assert splits.test.y.bincount().tolist() == [4, 4, 4]
    everything = _rows(splits.train.x) + _rows(splits.val.x) + _rows(splits.test.x)
    assert sorted(everything) == sorted(_folder_images(tmp_path))  # PNG is lossless
    # The test split stays put whatever the seed; validation moves.
    other = load_dataset("imagefolder", tmp_path, seed=3)
    assert _same(splits.test, other.test) and not _same(splits.val, other.val)
    cats = _folder_images(tmp_path / "cat")
    assert all(row in cats for row, y in zip(everything, torch.cat(
        [splits.train.y, splits.val.y, splits.test.y]).tolist(), strict=True) if y == 0)


@pytest.mark.parametrize("val_name", [None, "val", "valid", "validation"])
def test_image_folder_with_its_own_split(tmp_path: Path, val_name: str | None) -> None:
    write_image_folder(tmp_path, per_class=10, split=True)
    if val_name is not None:
        shutil.copytree(tmp_path / "test", tmp_path / val_name)
    splits = load_dataset("imagefolder", tmp_path)
    _check_splits(splits, channels=3, size=(32, 32), classes=3)
    assert sorted(_rows(splits.test.x)) == sorted(_folder_images(tmp_path / "test"))
    assert splits.test.y.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    if val_name is None:
        assert len(splits.train) == 27 and len(splits.val) == 3
    else:
        assert len(splits.train) == 30 and _same(splits.val, splits.test)


def test_image_folder_formats(tmp_path: Path) -> None:
    for i, fmt in enumerate(["jpg", "JPEG", "bmp", "gif", "webp", "tiff"]):
        for name in ("a", "b"):
            folder = tmp_path / name / f"sub{i}"  # class folders are searched recursively
            folder.mkdir(parents=True)
            colour = (200, 30, 30) if name == "a" else (30, 30, 200)
            for j in range(2):
                Image.new("RGB", (16, 12), colour).save(folder / f"{j}.{fmt}",
                                                        format=fmt.upper().replace("JPG", "JPEG"))
    splits = load_dataset("imagefolder", tmp_path)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 24
    assert splits.train.x.shape[1:] == (3, 12, 16)
    red = splits.train.x[splits.train.y == 0].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[2] < 80


def test_large_and_mixed_sizes_become_squares(tmp_path: Path) -> None:
    big = tmp_path / "big"
    write_image_folder(big, per_class=10, size=(200, 160))
    splits = load_dataset("imagefolder", big, val_fraction=0.25)
    assert splits.train.x.shape[1:] == (3, MAX_SIDE, MAX_SIDE)

    kept = tmp_path / "kept"
    write_image_folder(kept, per_class=10, size=(64, 48))
    assert load_dataset("imagefolder", kept, val_fraction=0.25).test.x.shape[1:] == (3, 48, 64)

    mixed = tmp_path / "mixed"
    write_image_folder(mixed, per_class=10, size=(40, 30))
    # A wide image in thirds red | green | blue: the centre crop keeps only the green.
    thirds = np.zeros((100, 300, 3), np.uint8)
    thirds[:, :100, 0] = thirds[:, 100:200, 1] = thirds[:, 200:, 2] = 255
    Image.fromarray(thirds).save(mixed / "cat" / "wide.png")
    splits = load_dataset("imagefolder", mixed, val_fraction=0.25)
    assert splits.train.x.shape[1:] == (3, MAX_SIDE, MAX_SIDE)
    everything = torch.cat([splits.train.x, splits.val.x, splits.test.x]).float()
    centre = everything[:, :, 8:-8, 8:-8]
    green = (centre[:, 1] > 250) & (centre[:, 0] < 5) & (centre[:, 2] < 5)
    assert int(green.all(dim=(1, 2)).sum()) == 1


def _folder_error(root: Path) -> str:
    with pytest.raises(InputError) as error:
        load_dataset("imagefolder", root)
    return _one_line(error)


def test_image_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert str(missing) in _folder_error(missing) and "--data-dir" in _folder_error(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} has no class folders" in _folder_error(empty)

    no_images = tmp_path / "no_images"
    for name in ("a", "b"):
        (no_images / name).mkdir(parents=True)
    (no_images / "a" / "readme.txt").write_text("hi")
    assert f"{no_images} has no images" in _folder_error(no_images)

    one_empty = write_image_folder(tmp_path / "one_empty", per_class=20)
    (one_empty / "emu").mkdir()
    assert f"class folder {one_empty / 'emu'} has no images" in _folder_error(one_empty)

    one_class = write_image_folder(tmp_path / "one_class", classes=("cat",))
    assert "at least 2 classes" in _folder_error(one_class)

    broken = write_image_folder(tmp_path / "broken", per_class=20)
    (broken / "dog" / "0002.png").write_bytes(b"\x89PNG but not really")
    assert f"cannot decode image {broken / 'dog' / '0002.png'}" in _folder_error(broken)

    truncated = write_image_folder(tmp_path / "truncated", per_class=20, size=(64, 64))
    _truncate_image = truncated / "frog" / "0001.png"
    _truncate_image.write_bytes(_truncate_image.read_bytes()[:200])
    assert f"cannot decode image {_truncate_image}" in _folder_error(truncated)

    small = write_image_folder(tmp_path / "small", per_class=6)
    for path in sorted((small / "dog").iterdir())[2:]:
        path.unlink()
    message = _folder_error(small)
    assert "'dog'" in message and "has 2 images" in message and "at least 3" in message

    few = write_image_folder(tmp_path / "few", classes=tuple("abcdef"), per_class=3)
    message = _folder_error(few)
    assert "18 images for 6 classes" in message and "needs about 30" in message


def test_image_folder_split_errors(tmp_path: Path) -> None:
    differ = write_image_folder(tmp_path / "differ", per_class=4, split=True)
    shutil.rmtree(differ / "test" / "frog")
    message = _folder_error(differ)
    assert str(differ / "test") in message and "frog" in message

    train_only = write_image_folder(tmp_path / "train_only", per_class=4, split=True)
    shutil.rmtree(train_only / "test")
    assert "has train/ but no test/" in _folder_error(train_only)


# --- the disk cache --------------------------------------------------------------------------


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("read the files again instead of the cache")


@pytest.mark.parametrize(
    ("name", "write", "reader"),
    [("cifar10", write_cifar, "_unpickle"), ("mnist", write_mnist, "_read_idx"),
     ("imagefolder", write_image_folder, "_decode")],
)
def test_second_load_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, write: Callable[[Path], Path],
    reader: str,
) -> None:
    data, cache = write(tmp_path / "data"), tmp_path / "cache"
    first = load_dataset(name, data, cache_dir=cache)
    monkeypatch.setattr(objectives.datasets, reader, _refuse)
    again = load_dataset(name, data, cache_dir=cache, seed=1)  # the seed is not in the key
    assert _same(first.test, again.test) and not _same(first.val, again.val)
    assert first.class_names == again.class_names
    with pytest.raises((AssertionError, InputError), match="instead of the cache"):
        load_dataset(name, data, cache_dir=None)


def test_cache_follows_changed_files(tmp_path: Path) -> None:
    data, cache = write_cifar(tmp_path / "data"), tmp_path / "cache"
    first = load_dataset("cifar10", data, cache_dir=cache)
    write_cifar(data, seed=7)  # same names and sizes, new pixels
    test_batch = data / CIFAR10.base_folder / "test_batch"
    stat = test_batch.stat()
    os.utime(test_batch, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = load_dataset("cifar10", data, cache_dir=cache)
    assert np.array_equal(again.test.x.numpy(), cifar_arrays(seed=7)[2])
    assert not torch.equal(first.test.x, again.test.x)

    folder = write_image_folder(tmp_path / "folder", per_class=20)
    before = load_dataset("imagefolder", folder, cache_dir=cache)
    image = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(image).save(folder / "cat" / "extra.png")
    after = load_dataset("imagefolder", folder, cache_dir=cache)
    total = sum(len(s) for s in (after.train, after.val, after.test))
    assert total == sum(len(s) for s in (before.train, before.val, before.test)) + 1


def test_fake_images_carry_a_class_signal() -> None:
    labels = np.repeat(np.arange(4), 50)
    for shape in [(3, 8, 8), (1, 28, 28)]:
        x = fake_images(labels, shape, seed=0).reshape(len(labels), -1).astype(float)
        means = np.stack([x[labels == c].mean(axis=0) for c in range(4)])
        nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
        assert (nearest == labels).mean() > 0.9
