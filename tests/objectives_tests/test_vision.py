"""Image tasks: a data set in torchvision's format plus a torchvision backbone, fine-tuned."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision

from objectives.backbones import IMAGENET_MEAN, IMAGENET_STD
from objectives.config import TrialConfig
from objectives.train import fine_tune
from objectives.vision import load_vision_task
from tests.fake_data import write_cifar, write_mnist


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), train=200, test=50)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_cifar_task_uses_the_given_weights_and_imagenet_statistics(
    cifar_dir: Path, weights: Path
) -> None:
    task = load_vision_task("cifar10", data_dir=cifar_dir, backbone="resnet18", weights=weights)
    data = task.data
    assert (data.mean, data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert data.crop_padding == 4 and data.flip  # CIFAR's usual augmentation
    assert data.train.x.shape[1:] == (3, 32, 32) and data.num_classes == 10
    assert len(data.train) == 180 and len(data.val) == 20 and len(data.test) == 50
    saved = torch.load(weights, weights_only=True)
    model = task.make_model(3)
    assert torch.equal(model.stages[0][0].weight, saved["conv1.weight"])
    assert torch.equal(model.stages[4][1].conv2.weight, saved["layer4.1.conv2.weight"])
    assert model.head.out_features == 10
    assert torch.equal(task.make_model(3).head.weight, model.head.weight)  # seeded head


@pytest.mark.parametrize("resolution", [0, 48])
def test_fine_tune_at_stored_and_upsampled_resolution(cifar_dir: Path, weights: Path,
                                                      resolution: int) -> None:
    task = load_vision_task("cifar10", data_dir=cifar_dir, backbone="resnet18", weights=weights)
    config = TrialConfig(optimizer="adamw", lr=1e-3, batch_size=64, epochs=1,
                         freeze_depth=3, resolution=resolution)
    result = fine_tune(config, task)
    final = result.final
    assert 0.0 <= final["val_accuracy"] <= 1.0 and math.isfinite(final["train_loss"])
    assert result.val_logits is not None and result.val_logits.shape == (20, 10)


@pytest.mark.parametrize("variant", ["mnist", "fashion_mnist"])
def test_grey_images_feed_a_three_channel_backbone(tmp_path: Path, variant: str) -> None:
    root = write_mnist(tmp_path, variant=variant, train=200, test=50)
    task = load_vision_task(variant, data_dir=root, backbone="mobilenet_v3_small",
                            pretrained=False)
    assert task.data.train.x.shape[1:] == (1, 28, 28)  # stored grey, expanded on the device
    assert task.data.flip == (variant != "mnist")  # a mirrored digit is no digit
    config = TrialConfig(optimizer="adam", lr=1e-3, batch_size=50, epochs=1, resolution=32)
    result = fine_tune(config, task)
    assert math.isfinite(result.final["train_loss"])


def test_no_pretrained_is_random_but_seeded(cifar_dir: Path) -> None:
    task = load_vision_task("cifar10", data_dir=cifar_dir, backbone="resnet18",
                            pretrained=False)
    a, b = task.make_model(0), task.make_model(0)
    assert torch.equal(a.stages[0][0].weight, b.stages[0][0].weight)
    assert not torch.equal(a.stages[0][0].weight, task.make_model(1).stages[0][0].weight)


def test_task_moves_train_and_val_to_the_device_but_not_test(cifar_dir: Path) -> None:
    task = load_vision_task("cifar10", data_dir=cifar_dir, backbone="resnet18",
                            pretrained=False)
    moved = task.to("meta")
    assert moved.data.train.x.device.type == "meta" and moved.data.val.y.device.type == "meta"
    assert moved.data.test.x.device.type == "cpu"  # only search.refit touches the test split
    assert moved.make_model is task.make_model
