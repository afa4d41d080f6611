"""`python -m search.bench.throughput`: training images per second, ours against the usual loop.

ours is `fine_tune` itself, timed by its own `images_per_second` over one epoch of `steps`
batches; the baseline is a DataLoader whose Dataset runs torchvision's per-image PIL transforms,
with one worker per core and pinned memory on CUDA, and the same model, optimizer, autocast and
memory layout. Rounds alternate which side goes first, so that a noisy neighbour hurts both;
medians are quoted.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from objectives.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task
from objectives.losses import build_loss
from objectives.optim import build_optimizer
from objectives.train import _autocast, fine_tune
from search.core.cli import Parser

PER_CLASS = 500  # images read per class folder: 5,000 CIFAR-10 images, decoded before timing
CLASSES = 10
# (images per second, largest weight change in the timed steps, images in the timed steps)
Timing = tuple[float, float, int]


def load_images(folder: Path, per_class: int = PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) images and labels: the first `per_class` files of each class folder
    (PIL: `load_dataset` would decode all 60,000, 30 s here against 5 s for 5,000)."""
    folder = folder / "train" if (folder / "train").is_dir() else folder
    arrays, labels = [], []
    for label, cls in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for path in sorted(cls.iterdir())[:per_class]:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


class PilImages(Dataset[tuple[torch.Tensor, int]]):
    """The usual CIFAR Dataset: HWC uint8 arrays, one PIL image and transform per item."""

    def __init__(self, split: Split, resolution: int) -> None:
        self.hwc = split.x.permute(0, 2, 3, 1).numpy()  # as torchvision's CIFAR10 holds them
        self.y = split.y.tolist()
        side = self.hwc.shape[1]
        resize = [transforms.Resize(resolution)] if resolution not in (0, side) else []
        self.transform = transforms.Compose([
            transforms.RandomCrop(side, padding=4), transforms.RandomHorizontalFlip(), *resize,
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.hwc[i])), self.y[i]


def _weights(model: torch.nn.Module) -> torch.Tensor:
    """All weights in one float32 CPU vector, a copy: how far they move proves training.

    `reshape`, not `parameters_to_vector`'s `view`: a channels-last conv weight (the model on
    CUDA) cannot be viewed flat."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])


def _ours(config: TrialConfig, task: Task, warm: Task | None, device: torch.device) -> Timing:
    """(images/s, weight change, images) of one `fine_tune` epoch, after a warm-up epoch. It
    includes the fresh optimizer's first step, which the baseline's window leaves out."""
    if warm is not None:  # kernels, allocator and cuDNN autotuning, outside the timing
        fine_tune(config, warm, device=device)
    result = fine_tune(config, task, device=device)
    moved = _weights(result.model) - _weights(task.make_model(config.seed))  # from its start
    return result.final["images_per_second"], float(moved.abs().max()), len(task.data.train)


def _baseline(config: TrialConfig, loader: DataLoader[Any], model: torch.nn.Module,
              optimizer: torch.optim.Optimizer, device: torch.device, warmup: int) -> Timing:
    """(images/s, weight change, images) of one loader epoch, its first `warmup` batches
    untimed."""
    cuda = device.type == "cuda"
    criterion = build_loss(config.loss)
    model.train()
    before, images, started = _weights(model), 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == warmup:  # the timing window opens here, with the device idle
            if cuda:
                torch.cuda.synchronize()
            before, images, started = _weights(model), 0, time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    if cuda:
        torch.cuda.synchronize()  # the one wait, closing the timing window
    seconds = time.perf_counter() - started
    return images / seconds, float((_weights(model) - before).abs().max()), images


@dataclass(frozen=True)
class Throughput:
    """One measurement: `backbone` at `resolution`, `batch_size` images a step, `rounds` rounds
    of `warmup` untimed then `steps` timed steps a side, on `device` (auto: CUDA when there).

    Images: `images` (uint8 (N, 3, H, W)), else the CIFAR-10 JPEGs in `data`, else random.
    `workers` (the baseline's DataLoader's) defaults to one per core (`os.cpu_count()`), the
    usual setting of a DataLoader on a GPU node, so the baseline's decoding is not starved."""

    device: str
    backbone: str = "resnet18"
    resolution: int = 32
    batch_size: int = 256
    steps: int = 30
    warmup: int = 5
    rounds: int = 3
    images: torch.Tensor | None = field(default=None, repr=False, compare=False)
    workers: int | None = None
    data: Path | None = None


def measure(run: Throughput) -> dict[str, Any]:
    """Median training images/s of ours and the baseline, their ratio, and the settings.

    `*_weight_change` and `*_images` (last round) show that the timed steps trained, and on how
    many images."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if run.device == "auto"
                       else run.device)
    cuda = dev.type == "cuda"
    x, y = _pool(run)
    workers = (os.cpu_count() or 1) if run.workers is None else run.workers
    batch_size, warmup = run.batch_size, run.warmup

    def split(count: int) -> Split:  # `count` images cycled from the pool
        index = torch.arange(count) % len(x)
        return Split(x[index], y[index])

    def task(count: int) -> Task:  # a fine_tune epoch of count / batch_size steps
        tiny = split(CLASSES)  # fine_tune validates after the timed epoch: keep that short
        held = ImageData(split(count), tiny, tiny, tuple(map(str, range(CLASSES))),
                         IMAGENET_MEAN, IMAGENET_STD, crop_padding=4, flip=True)
        return Task("throughput", held,
                    lambda seed: build_backbone(run.backbone, CLASSES, state=None, seed=seed))

    config = TrialConfig(loss="cross_entropy", optimizer="adamw", lr=1e-3, warmup_epochs=0.0,
                         epochs=1, batch_size=batch_size, resolution=run.resolution, seed=0)
    timed, warm = task(run.steps * batch_size), task(warmup * batch_size) if warmup else None
    # One loader epoch is exactly warmup + steps batches, like ours' warm-up and timed epochs.
    dataset = PilImages(split((warmup + run.steps) * batch_size), run.resolution)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=cuda, drop_last=True, persistent_workers=workers > 0)
    model = timed.make_model(config.seed).to(dev)
    if cuda:
        torch.backends.cudnn.benchmark = True  # as fine_tune sets it
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay, fused=cuda)
    runs: dict[str, list[Timing]] = {"ours": [], "baseline": []}
    for r in range(run.rounds):
        for name in ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours"):
            runs[name].append(_ours(config, timed, warm, dev) if name == "ours" else
                              _baseline(config, loader, model, optimizer, dev, warmup))
    ours, baseline = (statistics.median(t[0] for t in runs[k]) for k in ("ours", "baseline"))
    return {"ours_images_per_s": ours, "baseline_images_per_s": baseline, "ratio": ours / baseline,
            "ours_weight_change": runs["ours"][-1][1], "device": str(dev),
            "backbone": run.backbone, "baseline_weight_change": runs["baseline"][-1][1],
            "resolution": run.resolution, "ours_images": runs["ours"][-1][2],
            "baseline_images": runs["baseline"][-1][2], "batch_size": batch_size,
            "workers": workers, "images": len(x)}


def _pool(run: Throughput) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the steps cycle through, and their labels."""
    if run.images is None and run.data is not None and run.data.is_dir():
        return load_images(run.data)
    x = run.images if run.images is not None else torch.randint(
        0, 256, (PER_CLASS * CLASSES, 3, 32, 32), dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0))
    return x, torch.arange(len(x)) % CLASSES  # labels do not change the speed


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="search.bench.throughput",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--backbone", default="resnet18")
    for flag, default in (("--resolution", 32), ("--batch-size", 256), ("--steps", 30),
                          ("--warmup", 5), ("--rounds", 3)):
        parser.add_argument(flag, type=int, default=default, help="default: %(default)s")
    parser.add_argument("--workers", type=int,
                        help=f"baseline DataLoader workers (default: one per core, "
                             f"{os.cpu_count() or 1} here)")
    parser.add_argument("--data", type=Path, default=None, metavar="FOLDER",
                        help="CIFAR-10 JPEGs (FOLDER/train/<class>/*.jpg or FOLDER/<class>/"
                             "*.jpg); default: random images")
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_dir():
        print(f"search.bench.throughput: error: --data {args.data} is not a folder: give the "
              "folder of CIFAR-10 JPEGs, or leave it out for random images", file=sys.stderr)
        return 2
    r = measure(Throughput(device=args.device, backbone=args.backbone,
                           resolution=args.resolution, batch_size=args.batch_size,
                           steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                           workers=args.workers, data=args.data))
    source = args.data if args.data is not None else "random uint8 images"
    print(f"{r['backbone']} {r['resolution']}px, batch {r['batch_size']}, {args.steps} steps x "
          f"{args.rounds} rounds (medians), {r['device']}; {r['images']} images from {source}")
    print(f"  ours      fine_tune, uint8 + augmentation on device  "
          f"{r['ours_images_per_s']:9.1f} images/s")
    print(f"  baseline  DataLoader + PIL transforms, {r['workers']} workers   "
          f"{r['baseline_images_per_s']:9.1f} images/s")
    print(f"  ratio     ours / baseline {r['ratio']:35.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
