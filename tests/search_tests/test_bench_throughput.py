"""The throughput benchmark runs both training paths end to end on the CPU (speed not judged)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch.nn.utils import parameters_to_vector

from search.bench import throughput as bench_throughput
from search.bench.throughput import Throughput, _weights, main, measure

pytestmark = pytest.mark.slow  # real searches, processes or servers


def test_throughput_times_what_it_ran_and_both_sides_train(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # One "core": the default workers (one per core) then starts one loader worker process.
    monkeypatch.setattr(bench_throughput.os, "cpu_count", lambda: 1)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    steps, batch_size = 3, 16
    result = measure(Throughput(device="cpu", backbone="resnet18", resolution=32,
                                batch_size=batch_size, steps=steps, warmup=1, rounds=1,
                                images=images))
    for side in ("ours", "baseline"):
        assert math.isfinite(result[f"{side}_images_per_s"])
        assert result[f"{side}_images_per_s"] > 0
        # The timed window is exactly `steps` batches: the warm-up batch is left out of it.
        assert result[f"{side}_images"] == steps * batch_size, side
        # The timed steps moved the weights: both sides trained, not just ran forward.
        assert result[f"{side}_weight_change"] > 0, side
    assert result["workers"] == 1  # the default: one loader worker per core
    assert (result["device"], result["batch_size"], result["images"]) == ("cpu", 16, 64)


def test_weights_of_a_channels_last_model() -> None:
    # The model is channels-last on CUDA; parameters_to_vector's view(-1) raises on it.
    model = torchvision.models.resnet18()
    expected = parameters_to_vector(model.parameters()).detach()
    model.to(memory_format=torch.channels_last)
    assert not next(model.parameters()).is_contiguous()  # the first conv weight is NHWC
    flat = _weights(model)
    assert flat.shape == (sum(p.numel() for p in model.parameters()),)
    assert flat.dtype == torch.float32 and flat.device.type == "cpu"
    assert torch.equal(flat, expected)  # the same order as the contiguous model's


def test_workers_default_is_one_per_core_in_the_help(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_throughput.os, "cpu_count", lambda: 16)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "one per core, 16 here" in " ".join(capsys.readouterr().out.split())


def test_the_benchmark_refuses_a_data_folder_that_is_not_there(
        capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    from search.bench.suite import main as bench

    assert bench(["--only", "throughput", "--data-dir", f"{tmp_path}/absent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("search.bench: error: --data-dir ") and "is not a folder" in err


def test_the_throughput_benchmark_refuses_a_data_folder_that_is_not_there(
        capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["--data", f"{tmp_path}/absent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("search.bench.throughput: error: --data ")
