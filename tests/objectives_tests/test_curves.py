"""The curves study's simulated training: deterministic per seed, shaped like fine-tuning
(late starters, divergence, frozen plateaus), and fine_tune's contract kept (metrics from real
logits, checkpoints that resume to the same epochs, the simulated time slept)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objectives.config import TrialConfig
from objectives.curves import curve, load_task, logits_with, simulate
from objectives.metrics import classification_metrics
from objectives.train import DivergedError

BEST = TrialConfig(optimizer="adamw", lr=1e-3, batch_size=64, epochs=15, warmup_epochs=1)


def test_a_configuration_and_seed_give_one_curve_and_another_seed_another() -> None:
    assert curve(BEST) == curve(TrialConfig(**BEST.to_dict()))
    other = curve(BEST.replace(seed=1)).accuracy
    assert other != curve(BEST).accuracy
    # The noise moves the curve by about a point, not its shape.
    assert max(abs(a - b) for a, b in zip(other, curve(BEST).accuracy, strict=True)) < 0.06


def test_a_low_learning_rate_starts_late_and_ends_near_the_best() -> None:
    best, slow = curve(BEST).accuracy, curve(BEST.replace(lr=1e-4)).accuracy
    assert slow[1] < best[1] - 0.2  # after two epochs, far behind: what a pruner cuts
    assert slow[-1] > best[-1] - 0.06  # after fifteen, a few points short
    assert all(b > 0.85 for b in best[-5:])  # the usual rate saturates


def test_sgd_far_above_its_rate_diverges_within_three_epochs() -> None:
    wild = BEST.replace(optimizer="momentum", lr=1.0)
    found = curve(wild)
    assert found.diverges_at is not None and 1 <= found.diverges_at <= 3
    seen: list[int] = []
    with pytest.raises(DivergedError):
        simulate(wild, load_task(), on_epoch=lambda e, m: seen.append(e))
    assert len(seen) == found.diverges_at - 1
    assert curve(BEST.replace(optimizer="momentum", lr=0.03)).diverges_at is None


def test_a_frozen_backbone_rises_sooner_and_plateaus_lower() -> None:
    full, frozen = curve(BEST).accuracy, curve(BEST.replace(freeze_depth=5)).accuracy
    assert frozen[0] > full[0]
    assert frozen[-1] < full[-1] - 0.05


def test_loss_families_differ_by_a_point_or_two_at_the_same_settings() -> None:
    def plateau(loss: str) -> float:  # the last five epochs, over five seeds
        return sum(sum(curve(BEST.replace(loss=loss, seed=s)).accuracy[-5:])
                   for s in range(5)) / 25

    plateaus = {loss: plateau(loss) for loss in ("cross_entropy", "label_smoothing", "mse")}
    assert max(plateaus.values()) - min(plateaus.values()) < 0.03
    assert plateaus["label_smoothing"] > plateaus["mse"]


@pytest.mark.parametrize("accuracy", [0.1, 0.537, 0.92, 0.999])
def test_logits_have_exactly_the_curve_s_accuracy(accuracy: float) -> None:
    import numpy as np

    targets = load_task().data.val.y
    logits = logits_with(accuracy, targets, np.random.default_rng(0))
    metrics = classification_metrics(logits, targets)
    assert metrics["val_accuracy"] == pytest.approx(round(accuracy * len(targets)) / len(targets))
    assert 0.0 <= metrics["val_ece"] <= 0.1  # about as confident as accurate


def test_simulate_reports_every_epoch_with_the_metrics_of_a_real_trial() -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    result = simulate(BEST, load_task(), on_epoch=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == list(range(1, 16))
    expected = {"train_loss", "val_accuracy", "val_cross_entropy", "val_macro_f1", "val_ece",
                "lr", "epoch_seconds", "images_per_second"}
    assert all(set(m) == expected for _, m in seen)
    assert [m["val_accuracy"] for _, m in seen] == pytest.approx(list(curve(BEST).accuracy),
                                                                abs=6e-4)
    assert result.val_logits is not None and result.val_targets is not None
    assert result.val_logits.shape == (1000, 10)
    assert isinstance(result.model, torch.nn.Module)


def test_an_interrupted_trial_resumes_from_its_checkpoint_to_the_same_epochs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trial.pt"

    def stop_at_5(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(BEST, load_task(), on_epoch=stop_at_5, checkpoint=path)
    seen: list[int] = []
    resumed = simulate(BEST, load_task(), on_epoch=lambda e, m: seen.append(e), checkpoint=path)
    # The checkpoint is written after each report: the interrupted epoch 5 is run again.
    assert resumed.resumed_from == 4 and seen == list(range(5, 16))
    whole = simulate(BEST, load_task())
    assert resumed.history == whole.history
    with pytest.raises(ValueError, match="refusing to resume"):
        simulate(BEST.replace(lr=2e-3), load_task(), checkpoint=path)


def test_each_epoch_takes_its_simulated_time_times_the_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("objectives.curves.time.sleep", slept.append)
    simulate(BEST.replace(epochs=3), load_task(time_scale=0.5))
    # the sleep is what the epoch's evaluation (milliseconds) left of its simulated time
    target = curve(BEST).epoch_seconds * 0.5
    assert len(slept) == 3 and all(target - 0.5 < s < target for s in slept), slept
    slept.clear()
    simulate(BEST.replace(epochs=3), load_task())  # 0: no sleep at all
    assert slept == []
    # Larger batches and frozen stages make shorter epochs.
    assert curve(BEST.replace(batch_size=512)).epoch_seconds < curve(BEST).epoch_seconds
    assert curve(BEST.replace(freeze_depth=4)).epoch_seconds < curve(BEST).epoch_seconds
