from __future__ import annotations

import numpy as np
import pytest
import torch

from objectives.data import ImageData, Split, channel_stats, stratified_split


def _labels() -> np.ndarray:
    # Unbalanced classes: 200, 100 and 60 items, shuffled.
    labels = np.repeat(np.arange(3), [200, 100, 60])
    return np.random.default_rng(0).permutation(labels)


def test_parts_are_disjoint_and_cover_everything() -> None:
    labels = _labels()
    parts = stratified_split(labels, sizes=(90, 0.5), seed=0)
    assert len(parts) == 3
    joined = np.concatenate(parts)
    assert len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))
    for part in parts:
        assert np.array_equal(part, np.sort(part))  # sorted indices


def test_counts_and_fractions() -> None:
    labels = _labels()
    train, val, test = stratified_split(labels, sizes=(90, 0.5), seed=0)
    assert len(train) == 90  # a size >= 1 is a count
    assert len(val) == round(0.5 * (len(labels) - 90))  # a fraction of what is left
    assert len(test) == len(labels) - 90 - len(val)
    first, rest = stratified_split(labels, sizes=(0.25,), seed=0)
    assert len(first) == 90 and len(rest) == 270  # a fraction of all


def test_parts_are_stratified() -> None:
    labels = _labels()
    overall = np.bincount(labels) / len(labels)
    for part in stratified_split(labels, sizes=(90, 0.5), seed=1):
        share = np.bincount(labels[part], minlength=3) / len(part)
        assert np.allclose(share, overall, atol=0.02), share
    train, _, _ = stratified_split(labels, sizes=(90, 0.5), seed=1)
    assert np.array_equal(np.bincount(labels[train]), [50, 25, 15])


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    labels = _labels()
    a = stratified_split(labels, sizes=(90, 0.5), seed=3)
    b = stratified_split(labels, sizes=(90, 0.5), seed=3)
    c = stratified_split(labels, sizes=(90, 0.5), seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def _images(n: int = 4) -> torch.Tensor:
    return torch.zeros(n, 1, 2, 2, dtype=torch.uint8)


def test_split_accepts_uint8_nchw() -> None:
    split = Split(_images(4), torch.arange(4))
    assert len(split) == 4
    moved = split.to("cpu")
    assert torch.equal(moved.x, split.x) and torch.equal(moved.y, split.y)


@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(4, 1, 2, 2, dtype=torch.float32),
        torch.zeros(4, 1, 2, 2, dtype=torch.int64),
        torch.zeros(4, 2, 2, dtype=torch.uint8),
        torch.zeros(4, 1, 1, 2, 2, dtype=torch.uint8),
    ],
)
def test_split_rejects_non_uint8_or_wrong_rank(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        Split(x, torch.arange(4))


def test_split_rejects_label_count_mismatch() -> None:
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        Split(_images(4), torch.arange(3))


def test_channel_stats() -> None:
    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    x[:, 0] = 255  # channel 0 all white: mean 1, std 0 (clamped)
    x[0, 1] = 255  # channel 1 half white: mean 0.5
    x[:, 2, 0, 0] = 51  # channel 2: one pixel in four is 0.2
    mean, std = channel_stats(x)
    assert isinstance(mean, tuple) and isinstance(std, tuple)
    assert len(mean) == len(std) == 3
    assert mean == pytest.approx((1.0, 0.5, 0.05), abs=1e-6)
    reference = (x.float() / 255).permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    assert std[1] == pytest.approx(float(reference[1]), rel=1e-5)
    assert std[2] == pytest.approx(float(reference[2]), rel=1e-5)
    assert std[0] > 0  # never zero: normalizing by it stays finite


def _data(mean: tuple[float, ...], std: tuple[float, ...]) -> ImageData:
    split = Split(torch.zeros(1, len(mean), 2, 2, dtype=torch.uint8), torch.zeros(1).long())
    return ImageData(split, split, split, ("a", "b"), mean, std)


def test_normalize() -> None:
    data = _data((0.5, 0.25), (0.5, 0.1))
    x = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(1, 1, 2, 2).repeat(3, 2, 1, 1)
    out = data.normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    scaled = torch.tensor([0.0, 1.0, 0.2, 0.4]).view(1, 2, 2)
    assert torch.allclose(out[:, 0], (scaled - 0.5) / 0.5)
    assert torch.allclose(out[:, 1], (scaled - 0.25) / 0.1)
    assert data.num_classes == 2


def test_normalized_training_images_have_zero_mean_unit_std() -> None:
    x = torch.randint(0, 256, (50, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    x = x.to(torch.uint8)
    data = _data(*channel_stats(x))
    out = data.normalize(x)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)
