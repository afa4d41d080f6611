from __future__ import annotations

import pytest
import torch

from objectives.augment import random_crop, random_flip


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
