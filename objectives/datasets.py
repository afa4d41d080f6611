"""Image data sets read from disk into uint8 tensors: CIFAR-10/100, (Fashion-)MNIST, image folders.

The files are torchvision's own layouts, so a folder torchvision filled works as it is; they are
read with numpy rather than through torchvision's dataset classes, which md5-check every file and
decode CIFAR image by image. Decoded arrays are cached with joblib.Memory under a key made of
each source file's path, size and mtime, and split into validation after the cache.
"""

from __future__ import annotations

import gzip
import math
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Memory, Parallel, delayed
from PIL import Image, ImageOps
from torchvision import datasets as tv_datasets
from torchvision.datasets import utils as tv_utils

from objectives.data import Split, stratified_split
from objectives.errors import InputError

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder")
MAX_SIDE = 128  # pixels: larger or mixed-size folder images become MAX_SIDE x MAX_SIDE
TEST_FRACTION = 0.2  # of an image folder without a test/ folder of its own
TEST_SEED = 0  # that test split is the same whatever `seed`, like an official test split
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VAL_FOLDERS = ("val", "valid", "validation")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")  # in the order of CIFAR-10's labels

_CIFAR: dict[str, tuple[Any, str]] = {  # torchvision class, key of the labels
    "cifar10": (tv_datasets.CIFAR10, "labels"),
    "cifar100": (tv_datasets.CIFAR100, "fine_labels"),
}
_MNIST: dict[str, Any] = {"mnist": tv_datasets.MNIST, "fashion_mnist": tv_datasets.FashionMNIST}

_OFF = "downloads are off"
Parts = dict[str, tuple[np.ndarray, np.ndarray]]  # split name -> (uint8 images, int64 labels)
Signature = tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of each source file


@dataclass(frozen=True)
class Splits:
    """A data set's three splits (uint8 images on the CPU) and its class names."""

    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]


def load_dataset(
    name: str, root: str | Path, *, seed: int = 0, cache_dir: str | Path | None = None,
    download: bool = True, val_fraction: float = 0.1,
) -> Splits:
    """Train, validation (a stratified `val_fraction` of train, drawn with `seed`) and test.

    Missing CIFAR/MNIST files are downloaded into `root` when `download`; every problem a user
    can fix (missing, corrupt or unusable files) raises InputError with a one-line message.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(root).expanduser().absolute()  # messages name the full path
    memory = Memory(str(cache_dir) if cache_dir is not None else None, verbose=0)
    where = root
    if name in _CIFAR:
        files = _cifar_files(name, root, download)
        parts, names = memory.cache(_read_cifar)(name, files, _signature(files))
    elif name in _MNIST:
        files = _mnist_files(name, root, download)
        parts, names = memory.cache(_read_mnist)(name, files, _signature(files))
    else:
        layout, names = _scan_image_folder(root)
        files = [path for part in layout.values() for path, _ in part]
        parts = memory.cache(_read_images)(layout, _signature(files))
        where = root / "train" if "train" in layout else root  # for messages on too few images
    return _split(parts, tuple(names), seed=seed, val_fraction=val_fraction, where=str(where))


def read_cifar10(root: str | Path, *, cache_dir: str | Path | None = None
                 ) -> tuple[Parts, list[str]]:
    """CIFAR-10's official train and test parts, unsplit, with its ten class names, from either
    torchvision's layout (`root/cifar-10-batches-py/`) or JPEG folders (`root/train/<class>/`
    and `root/test/<class>/`, all ten classes). Nothing is downloaded; InputError otherwise."""
    root = Path(root).expanduser().absolute()
    cls, _ = _CIFAR["cifar10"]
    memory = Memory(str(cache_dir) if cache_dir is not None else None, verbose=0)
    if (root / cls.base_folder).is_dir():
        files = _cifar_files("cifar10", root, download=False)
        parts, _ = memory.cache(_read_cifar)("cifar10", files, _signature(files))
        return parts, list(CIFAR10_CLASSES)  # a label's class is its index, whatever the meta
    if not root.is_dir() or not {"train", "test"} & {d.name for d in root.iterdir()}:
        raise InputError(f"no CIFAR-10 in {root}: give --data-dir a folder with "
                         f"{cls.base_folder}/ (torchvision's layout, from {cls.url}) or with "
                         "train/<class>/*.jpg and test/<class>/*.jpg")
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise InputError(f"CIFAR-10 folder {root} has no {part}/ split: it needs "
                             f"train/<class>/ and test/<class>/ image folders")
        present = {d.name for d in (root / part).iterdir() if d.is_dir()}
        if lacking := [c for c in CIFAR10_CLASSES if c not in present]:
            raise InputError(f"CIFAR-10 folder {root / part} has no class folder "
                             f"{lacking[0]!r}: it needs all ten ({', '.join(CIFAR10_CLASSES)})")
    layout, names = _scan_image_folder(root)
    keep = [names.index(c) for c in CIFAR10_CLASSES]  # only the ten, in CIFAR-10's order
    relabel = {old: new for new, old in enumerate(keep)}
    layout = {part: [(path, relabel[label]) for path, label in items if label in relabel]
              for part, items in layout.items()}
    files = [path for items in layout.values() for path, _ in items]
    return memory.cache(_read_images)(layout, _signature(files)), list(CIFAR10_CLASSES)


def _signature(files: Iterable[Path]) -> Signature:
    """What the cached readers take only for the key: a changed file is read again."""
    stats = ((str(path), path.stat()) for path in files)
    return tuple((path, stat.st_size, stat.st_mtime_ns) for path, stat in stats)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _download(urls: Sequence[str], folder: Path, filename: str, md5: str) -> str:
    """Download and extract from the first url that works; what happened, in a few words."""
    errors = []
    for url in urls:
        try:
            tv_utils.download_and_extract_archive(url, folder, filename=filename, md5=md5)
            return f"{url} did not contain it"
        except Exception as error:  # URLError, OSError, md5 RuntimeError, tarfile errors...
            errors.append(f"{url}: {_one_line(error)}" if len(urls) > 1 else _one_line(error))
    return f"the download failed ({'; '.join(errors)})"


def _missing(what: str, path: Path, url: str, into: Path, root: Path, why: str) -> InputError:
    where = f"{into} in " if into != root else ""
    return InputError(f"{what} file {path} is missing and {why}: fetch {url} and extract it "
                      f"into {where}the data directory {root} (--data-dir)")


def _cifar_files(name: str, root: Path, download: bool) -> list[Path]:
    cls, _ = _CIFAR[name]
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    files = [root / cls.base_folder / f for f in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        why = _download([cls.url], root, cls.filename, cls.tgz_md5) if download else _OFF
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise _missing(name, missing[0], cls.url, root, root, why)
    return files


def _corrupt(path: str | Path, problem: str) -> InputError:
    return InputError(f"data file {path} is corrupt or truncated ({problem}): delete it and "
                      f"download it again")


def _check_labels(y: np.ndarray, classes: int, path: Path) -> None:
    if y.ndim != 1 or (len(y) and not 0 <= y.min() <= y.max() < classes):
        raise _corrupt(path, f"labels outside 0-{classes - 1}")


def _unpickle(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # the files were written by Python 2
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_cifar(name: str, files: list[Path], signature: Signature) -> tuple[Parts, list[str]]:
    cls, label_key = _CIFAR[name]
    *batches, meta_path = files
    try:
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in _unpickle(str(meta_path))[cls.meta["key"]]]
    except Exception as error:
        raise _corrupt(meta_path, _one_line(error)) from error
    if len(names) != (10 if name == "cifar10" else 100):
        raise _corrupt(meta_path, f"{len(names)} class names")
    xs, ys = [], []
    for path in batches:
        try:
            entry = _unpickle(str(path))
            # One reshape for the whole batch: rows are 1024 red, then green, then blue values.
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as error:
            raise _corrupt(path, _one_line(error)) from error
        if len(x) != len(y):
            raise _corrupt(path, f"{len(x)} images but {len(y)} labels")
        _check_labels(y, len(names), path)
        xs.append(x)
        ys.append(y)
    n_train = len(cls.train_list)
    parts = {"train": (np.concatenate(xs[:n_train]), np.concatenate(ys[:n_train])),
             "test": (np.concatenate(xs[n_train:]), np.concatenate(ys[n_train:]))}
    return parts, names


def _mnist_files(name: str, root: Path, download: bool) -> list[Path]:
    cls = _MNIST[name]
    raw = root / cls.__name__ / "raw"  # torchvision's MNIST.raw_folder
    files = []
    for gz_name, md5 in cls.resources:
        plain = raw / gz_name.removesuffix(".gz")
        if not plain.is_file() and not (raw / gz_name).is_file():
            urls = [mirror + gz_name for mirror in cls.mirrors]
            why = _download(urls, raw, gz_name, md5) if download else _OFF
            if not plain.is_file() and not (raw / gz_name).is_file():
                raise _missing(name, plain, urls[0], raw, root, why)
        files.append(plain if plain.is_file() else raw / gz_name)
    return files


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (http://yann.lecun.com/exdb/mnist/): big-endian header, then uint8 data."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        if data[:4] != bytes([0, 0, 0x08, ndim]):
            raise ValueError(f"not an idx file of {ndim}-d uint8 data")
        shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except Exception as error:  # gzip, EOF and reshape errors alike
        raise _corrupt(path, _one_line(error)) from error


def _read_mnist(name: str, files: list[Path], signature: Signature) -> tuple[Parts, list[str]]:
    parts = {}
    for part, (x_path, y_path) in (("train", files[:2]), ("test", files[2:])):
        x, y = _read_idx(x_path, 3), _read_idx(y_path, 1)
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise _corrupt(x_path, f"images {x.shape} for {len(y)} labels in {y_path.name}")
        _check_labels(y, 10, y_path)
        parts[part] = (x[:, None], y.astype(np.int64))
    return parts, list(_MNIST[name].classes)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith(".") and p.is_file())


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    kinds = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"image folder {folder} has no class folders: put each class's "
                         f"images in {folder}/<class name>/")
    found = {d.name: _image_files(d) for d in classes}
    if not any(found.values()):
        raise InputError(f"image folder {folder} has no images ({kinds}) in its class folders")
    for name, files in found.items():
        if not files:
            raise InputError(f"class folder {folder / name} has no images ({kinds}): add some "
                             f"or remove the folder")
    return found


def _scan_image_folder(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """Image files with their class index, by part ("train", "test", "val", or "all")."""
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist: pass the folder of class "
                         f"folders (or of train/ and test/) as --data-dir")
    subs = {d.name for d in root.iterdir() if d.is_dir()}
    folders = {"all": root}
    if subs & {"train", "test"}:
        if not {"train", "test"} <= subs:
            have, lack = ("train", "test") if "train" in subs else ("test", "train")
            raise InputError(f"image folder {root} has {have}/ but no {lack}/: add {lack}/ or "
                             f"put the class folders directly in {root}")
        folders = {"train": root / "train", "test": root / "test"}
        val = next((v for v in VAL_FOLDERS if v in subs), None)
        if val is not None:
            folders["val"] = root / val
    found = {part: _class_folders(folder) for part, folder in folders.items()}
    first = next(iter(found))
    names = sorted(found[first])
    if len(names) < 2:
        raise InputError(f"image folder {folders[first]} has {len(names)} class folder "
                         f"({', '.join(names)}): a classifier needs at least 2 classes")
    for part, classes in found.items():
        if sorted(classes) != names:
            diff = ", ".join(sorted(set(classes) ^ set(names)))
            raise InputError(f"{folders[part]} and {folders[first]} have different class "
                             f"folders ({diff} in only one): both need the same classes")
    layout = {part: [(path, label) for label, name in enumerate(names) for path in classes[name]]
              for part, classes in found.items()}
    return layout, names


def _undecodable(path: Path, error: Exception) -> InputError:
    return InputError(f"cannot decode image {path} ({_one_line(error)}): replace or delete it")


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except Exception as error:
        raise _undecodable(path, error) from error


def _decode(path: Path, out: np.ndarray, index: int, side: int | None) -> None:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        if side is not None:  # shorter side to `side` (antialiased), then the centre square
            rgb = ImageOps.fit(rgb, (side, side), Image.Resampling.BICUBIC)
        out[index] = np.asarray(rgb).transpose(2, 0, 1)
    except Exception as error:
        raise _undecodable(path, error) from error


def _read_images(layout: dict[str, list[tuple[Path, int]]], signature: Signature) -> Parts:
    files = [path for items in layout.values() for path, _ in items]
    # Threads: PIL releases the GIL while decoding, and all write into one preallocated array.
    parallel = Parallel(n_jobs=-1, backend="threading")
    sizes = parallel(delayed(_image_size)(path) for path in files)
    keep = len(set(sizes)) == 1 and max(sizes[0]) <= MAX_SIDE
    width, height = sizes[0] if keep else (MAX_SIDE, MAX_SIDE)
    x = np.empty((len(files), 3, height, width), np.uint8)
    side = None if keep else MAX_SIDE
    parallel(delayed(_decode)(path, x, i, side) for i, path in enumerate(files))
    parts, start = {}, 0
    for part, items in layout.items():
        labels = np.array([label for _, label in items], np.int64)
        parts[part] = (x[start:start + len(items)], labels)
        start += len(items)
    return parts


def _stratified(
    y: np.ndarray, fraction: float, seed: int, names: tuple[str, ...], where: str, need: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified `fraction` of `y` and of the rest; InputError if too small."""
    counts = np.bincount(y, minlength=len(names))
    small = int(np.argmin(counts))
    if counts[small] < need:
        raise InputError(f"class {names[small]!r} of {where} has {counts[small]} images; each "
                         f"class needs at least {need} to be split stratified into train, "
                         f"validation and test")
    taken = round(fraction * len(y))
    if min(taken, len(y) - taken) < len(names):
        least = math.ceil(len(names) / min(fraction, 1 - fraction))
        raise InputError(f"{where} has {len(y)} images for {len(names)} classes, too few for "
                         f"a stratified {fraction:.0%} split: it needs about {least}")
    part, rest = stratified_split(y, sizes=(fraction,), seed=seed)
    return part, rest


def to_split(x: np.ndarray, y: np.ndarray) -> Split:
    """uint8 images and int64 labels as a Split, without a copy where none is needed."""
    # A copy only where needed: cached or memory-mapped arrays may be read-only.
    x = np.require(x, np.uint8, ["C", "W"])
    return Split(torch.from_numpy(x), torch.from_numpy(np.require(y, np.int64, ["C", "W"])))


def _split(
    parts: Parts, names: tuple[str, ...], *, seed: int, val_fraction: float, where: str
) -> Splits:
    if "all" in parts:
        x, y = parts["all"]
        test, rest = _stratified(y, TEST_FRACTION, TEST_SEED, names, where, need=3)
        parts = {"train": (x[rest], y[rest]), "test": (x[test], y[test])}
    x, y = parts["train"]
    if "val" in parts:
        train, val = parts["train"], parts["val"]
    else:
        val_index, train_index = _stratified(y, val_fraction, seed, names, where)
        train, val = (x[train_index], y[train_index]), (x[val_index], y[val_index])
    return Splits(to_split(*train), to_split(*val), to_split(*parts["test"]), names)
