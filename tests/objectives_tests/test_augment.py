from __future__ import annotations

import pytest
import torch

from objectives.augment import random_crop, random_flip, resize
from objectives.data import ImageData, Split
from objectives.train import prepare


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int = 2, h: int = 5, w: int = 6) -> torch.Tensor:
    # Strictly positive and all distinct, so a crop's offset can be recovered exactly.
    return (torch.arange(n * c * h * w, dtype=torch.float32) + 1).view(n, c, h, w)


def _offsets(image: torch.Tensor, out: torch.Tensor, padding: int) -> list[tuple[int, int]]:
    """Every (row, col) offset at which `out` is a window of the zero-padded `image`."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    return [
        (i, j)
        for i in range(2 * padding + 1)
        for j in range(2 * padding + 1)
        if torch.equal(padded[:, i : i + h, j : j + w], out)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_crop_keeps_shape_and_dtype(dtype: torch.dtype) -> None:
    x = (_images(8) % 200).to(dtype)
    out = random_crop(x, 2, _gen())
    assert out.shape == x.shape and out.dtype == dtype


def test_crop_with_no_padding_is_identity() -> None:
    x = _images(4)
    assert torch.equal(random_crop(x, 0, _gen()), x)


@pytest.mark.parametrize("padding", [1, 2])
def test_every_crop_is_a_window_of_the_padded_image(padding: int) -> None:
    x = _images(12)
    out = random_crop(x, padding, _gen(1))
    for k in range(len(x)):
        found = _offsets(x[k], out[k], padding)
        # One offset for all channels at once, inside the padded image.
        assert len(found) == 1, f"image {k}: no in-bounds window matches"


def test_each_image_gets_its_own_offset() -> None:
    x = _images(64, c=1)
    out = random_crop(x, 2, _gen(2))
    offsets = [_offsets(x[k], out[k], 2)[0] for k in range(len(x))]
    assert len(set(offsets)) > 10  # 25 possible offsets
    rows = {i for i, _ in offsets}
    cols = {j for _, j in offsets}
    assert rows == set(range(5)) and cols == set(range(5))  # extremes reachable too


def test_crop_is_deterministic_for_a_seeded_generator() -> None:
    x = _images(32)
    a = random_crop(x, 2, _gen(5))
    b = random_crop(x, 2, _gen(5))
    c = random_crop(x, 2, _gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_mirrors_or_keeps_each_image() -> None:
    x = _images(200, c=2, h=3, w=4)
    out = random_flip(x, _gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = 0
    for k in range(len(x)):
        same = torch.equal(out[k], x[k])
        mirrored = torch.equal(out[k], x[k].flip(-1))
        assert same != mirrored, f"image {k} is neither kept nor mirrored"
        flipped += mirrored
    assert 70 <= flipped <= 130  # about half; binomial(200, 1/2) sd ~ 7


def test_flip_is_deterministic_for_a_seeded_generator() -> None:
    x = _images(64)
    assert torch.equal(random_flip(x, _gen(3)), random_flip(x, _gen(3)))
    assert not torch.equal(random_flip(x, _gen(3)), random_flip(x, _gen(4)))


@pytest.mark.parametrize("size", [16, 48, 224])
def test_resize_to_any_side(size: int) -> None:
    x = torch.rand(3, 3, 32, 32)
    out = resize(x, size)
    assert out.shape == (3, 3, size, size) and out.dtype == torch.float32
    # A constant image stays that constant whether up- or downsampled.
    flat = resize(torch.full((1, 3, 32, 32), 0.25), size)
    assert torch.allclose(flat, torch.full_like(flat, 0.25))


def test_resize_to_zero_or_the_same_side_is_a_no_op() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert resize(x, 0) is x and resize(x, 32) is x


def test_augmentation_draws_on_the_generators_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a GPU the generator lives there; a draw on the CPU would mean a host copy per step.
    # (No GPU here: check that every draw asks for the generator's own device.)
    asked: list[object] = []
    for name in ("randint", "rand"):
        real = getattr(torch, name)

        def spy(*args, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            asked.append((kwargs.get("device"), kwargs["generator"].device))
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    random_flip(random_crop(x, 2, _gen()), _gen())
    assert len(asked) == 2 and all(device == gen for device, gen in asked)


def test_prepare_augments_uint8_then_normalizes_and_resizes() -> None:
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.zeros(6, dtype=torch.long))
    data = ImageData(split, split, split, ("a",), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                     crop_padding=2, flip=True)
    eval_x = prepare(images, data, resolution=16)
    assert eval_x.shape == (6, 3, 16, 16) and eval_x.dtype == torch.float32
    train_x = prepare(images, data, resolution=16, generator=torch.Generator().manual_seed(0))
    assert train_x.shape == (6, 3, 16, 16) and not torch.equal(train_x, eval_x)
    # Zero padding is applied to uint8 pixels: black, as torchvision's RandomCrop pads.
    black = (0.0 - 0.5) / 0.25
    padded = prepare(torch.zeros_like(images), data, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(padded, torch.full_like(padded, black))
    last = prepare(images, data, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last)
