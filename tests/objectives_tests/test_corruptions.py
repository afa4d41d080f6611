from __future__ import annotations

import pytest
import torch

from objectives.corruptions import CORRUPTIONS, SEVERITIES, corrupt

ALL_SEVERITIES = (1, 2, 3, 4, 5)


def _images(n: int = 6, channels: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus a checkerboard and some noise, in the mid-range of 0-255.

    The gradients give the images large-scale structure, the checkerboard and noise the
    high frequencies a blur removes; mid-range values leave room before clipping.
    """
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, side)
    gradient = ramp.view(1, 1, -1, 1) * torch.rand(n, channels, 1, 1, generator=g) \
        + ramp.view(1, 1, 1, -1) * torch.rand(n, channels, 1, 1, generator=g)
    checker = ((torch.arange(side).view(-1, 1) + torch.arange(side)) % 2).float()
    x = 40 + 50 * gradient + 30 * checker + 20 * torch.rand(n, channels, side, side, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def _mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def _increasing(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values[:-1], values[1:], strict=True))


def _high_frequency_energy(x: torch.Tensor) -> float:
    """Spectral power above half the Nyquist frequency in either direction."""
    spectrum = torch.fft.fft2(x.float() - x.float().mean(dim=(2, 3), keepdim=True))
    freq = torch.fft.fftfreq(x.shape[-1]).abs()
    high = (freq.view(-1, 1) > 0.25) | (freq.view(1, -1) > 0.25)
    return spectrum.abs().pow(2)[..., high].sum().item()


def test_the_evaluated_severities() -> None:
    assert set(SEVERITIES) <= set(ALL_SEVERITIES)
    assert CORRUPTIONS == ("gaussian_noise", "gaussian_blur", "contrast", "brightness")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_device_and_range(name: str, channels: int) -> None:
    x = _images(channels=channels)
    x[0, :, :2] = 0  # extremes, so that clipping happens at both ends
    x[1, :, :2] = 255
    for severity in ALL_SEVERITIES:
        y = corrupt(x, name, severity)
        assert y.shape == x.shape and y.dtype == torch.uint8 and y.device == x.device
        assert not torch.equal(y, x)


def test_odd_shapes_and_an_empty_batch() -> None:
    for shape in [(1, 1, 1, 1), (2, 2, 3, 5), (0, 3, 8, 8)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        for name in CORRUPTIONS:
            assert corrupt(x, name, 5).shape == x.shape


def test_deterministic_per_seed() -> None:
    x = _images()
    for name in CORRUPTIONS:
        assert torch.equal(corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7))
    assert not torch.equal(corrupt(x, "gaussian_noise", 3, seed=7),
                           corrupt(x, "gaussian_noise", 3, seed=8))
    # Only the noise draws on the seed.
    for name in ("gaussian_blur", "contrast", "brightness"):
        assert torch.equal(corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=8))


def test_chunks_get_fresh_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    import objectives.corruptions as corruptions

    monkeypatch.setattr(corruptions, "_CHUNK", 2)  # 5 images: chunks of 2, 2 and 1
    x = torch.full((5, 3, 8, 8), 128, dtype=torch.uint8)
    y = corrupt(x, "gaussian_noise", 3, seed=3)
    assert torch.equal(y, corrupt(x, "gaussian_noise", 3, seed=3))
    # One generator runs on across the chunks: no two images share their noise.
    for i in range(5):
        for j in range(i):
            assert not torch.equal(y[i], y[j])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_the_shift_grows_with_severity(name: str) -> None:
    x = _images()
    shifts = [_mean_abs_diff(corrupt(x, name, s), x) for s in ALL_SEVERITIES]
    assert shifts[0] > 0
    assert _increasing(shifts), shifts


def test_noise_has_about_the_stated_spread() -> None:
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)  # far from clipping
    y = corrupt(x, "gaussian_noise", 5)
    assert (y.float() - 128).std().item() == pytest.approx(0.10 * 255, rel=0.05)
    assert (y.float() - 128).mean().item() == pytest.approx(0, abs=0.5)


def test_brightness_brightens() -> None:
    x = _images()
    means = [x.float().mean().item()]
    means += [corrupt(x, "brightness", s).float().mean().item() for s in ALL_SEVERITIES]
    assert _increasing(means), means
    # Without clipping, the shift is the stated one: 0.1 of the range at severity 1.
    assert means[1] - means[0] == pytest.approx(0.1 * 255, abs=0.5)


def test_contrast_reduces_spread_and_keeps_the_mean() -> None:
    x = _images()
    std = x.float().std(dim=(1, 2, 3))
    previous = std
    for severity in ALL_SEVERITIES:
        y = corrupt(x, "contrast", severity).float()
        y_std = y.std(dim=(1, 2, 3))
        assert (y_std < previous).all()
        previous = y_std
        # Each image and channel keeps its mean (up to rounding).
        assert torch.allclose(y.mean(dim=(2, 3)), x.float().mean(dim=(2, 3)), atol=0.5)
    # Severity 1 keeps 0.4 of each channel's deviation from its mean.
    y = corrupt(x, "contrast", 1).float()
    ratio = y.std(dim=(2, 3)) / x.float().std(dim=(2, 3))
    assert torch.allclose(ratio, torch.full_like(ratio, 0.4), atol=0.02)


def test_blur_removes_high_frequencies() -> None:
    x = _images()
    energy = [_high_frequency_energy(x)]
    energy += [_high_frequency_energy(corrupt(x, "gaussian_blur", s)) for s in ALL_SEVERITIES]
    assert _increasing(energy[::-1]), energy
    assert energy[-1] < 0.1 * energy[0]


def test_blur_keeps_a_flat_image_and_the_mean() -> None:
    flat = torch.full((2, 3, 9, 9), 77, dtype=torch.uint8)
    assert torch.equal(corrupt(flat, "gaussian_blur", 5), flat)  # edges repeat, not zero
    x = _images()
    y = corrupt(x, "gaussian_blur", 5)
    assert y.float().mean().item() == pytest.approx(x.float().mean().item(), abs=1.0)


def test_bad_arguments() -> None:
    x = _images()
    with pytest.raises(ValueError, match="gaussian_noise, gaussian_blur, contrast, brightness"):
        corrupt(x, "fog", 1)
    for severity in (0, 6, -1, 2.0, True):
        with pytest.raises(ValueError, match="severity"):
            corrupt(x, "contrast", severity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.float(), "contrast", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x[0], "contrast", 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_on_cuda() -> None:
    x = _images()
    for name in CORRUPTIONS:
        on_gpu = corrupt(x.cuda(), name, 5, seed=1)
        assert on_gpu.device.type == "cuda"
        # Same noise (drawn on the CPU); float arithmetic may round half a level differently.
        assert (on_gpu.cpu().int() - corrupt(x, name, 5, seed=1).int()).abs().max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_stays_on_a_device_other_than_the_cpu(name: str) -> None:
    # The meta device (shapes, no data) stands in for a GPU on a CPU-only machine: nothing in
    # corrupt may fall back to the CPU (refit corrupts the test split where the model is).
    x = _images().to("meta")
    for severity in (1, 5):  # 5: a larger blur kernel
        y = corrupt(x, name, severity)
        assert (y.device, y.shape, y.dtype) == (x.device, x.shape, torch.uint8)
