"""The throughput benchmark runs both training paths end to end on the CPU (speed not judged)."""

from __future__ import annotations

import math

import torch

from search.bench_throughput import throughput


def test_throughput_measures_both_sides_and_trains() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    result = throughput(device="cpu", backbone="resnet18", resolution=32, batch_size=16,
                        steps=3, warmup=1, rounds=1, images=images, workers=0)
    ours, baseline = result["ours_images_per_s"], result["baseline_images_per_s"]
    for value in (ours, baseline):
        assert math.isfinite(value) and value > 0
    assert math.isclose(result["ratio"], ours / baseline)
    # The timed steps moved the weights on both sides: they trained, not just ran forward.
    assert result["ours_weight_change"] > 0
    assert result["baseline_weight_change"] > 0
    assert (result["device"], result["batch_size"], result["images"]) == ("cpu", 16, 64)
