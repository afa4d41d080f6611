"""The refit rules' arithmetic (search.review.refit.refit_config): how a configuration chosen on
the train split trains on train + validation; and the refit-rule benchmark's bookkeeping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from objectives.config import TrialConfig
from search.bench import refit_rule
from search.bench.suite import main as bench_main
from search.core.errors import UsageError
from search.refit import main
from search.review.refit import REFIT_RULE, REFIT_RULES, RefitRequest, refit_config
from search.study.batches import steps_per_epoch

CHOSEN = TrialConfig(epochs=15, batch_size=64, warmup_epochs=1.0, lr=0.01)


def _steps(config: TrialConfig, images: int) -> tuple[int, int, int]:
    """Steps an epoch, in all, and of warmup, as objectives.train counts them."""
    per_epoch = steps_per_epoch(images, config.batch_size)
    return per_epoch, config.epochs * per_epoch, round(config.warmup_epochs * per_epoch)


def test_same_keeps_the_epochs_and_batch_and_so_takes_more_steps() -> None:
    refit = refit_config(CHOSEN, "same", trained_on=500, refit_on=1500)
    assert refit == CHOSEN
    assert _steps(CHOSEN, 500) == (8, 120, 8) and _steps(refit, 1500) == (24, 360, 24)


def test_steps_keeps_the_number_of_steps_and_of_warmup_steps() -> None:
    refit = refit_config(CHOSEN, "steps", trained_on=500, refit_on=1500)
    assert (refit.epochs, refit.batch_size) == (5, 64)
    assert refit.warmup_epochs == pytest.approx(1 / 3)
    assert _steps(refit, 1500) == (24, 120, 8)  # the trial's 120 steps, 8 of them warmup
    assert refit.replace(epochs=15, warmup_epochs=1.0) == CHOSEN  # nothing else changes
    # digits: 150 training images, 523 in train + validation, batch 16: within half an epoch.
    digits = TrialConfig(epochs=20, batch_size=16)
    refit = refit_config(digits, "steps", trained_on=150, refit_on=523)
    assert refit.epochs == 6 and abs(_steps(refit, 523)[1] - _steps(digits, 150)[1]) <= 33 / 2
    # Never below one epoch.
    assert refit_config(TrialConfig(epochs=1, batch_size=16), "steps", trained_on=16,
                        refit_on=1000).epochs == 1


def test_batch_keeps_the_steps_an_epoch_and_the_epochs() -> None:
    refit = refit_config(CHOSEN, "batch", trained_on=500, refit_on=1500)
    assert (refit.epochs, refit.batch_size, refit.warmup_epochs) == (15, 188, 1.0)
    assert _steps(refit, 1500) == _steps(CHOSEN, 500) == (8, 120, 8)
    for batch, trained, refit_on in [(16, 150, 523), (64, 150, 523), (256, 500, 1500),
                                     (32, 45_000, 50_000)]:
        config = TrialConfig(batch_size=batch)
        scaled = refit_config(config, "batch", trained_on=trained, refit_on=refit_on)
        # The smallest batch with no more steps an epoch than the trial took: the same, as
        # near as a whole batch gets (45,000 -> 50,000 images: 36 a batch, 1,389 steps, not
        # 1,407; 35 would be 1,429).
        target = steps_per_epoch(trained, batch)
        assert scaled.batch_size >= batch
        assert steps_per_epoch(refit_on, scaled.batch_size) <= target
        assert steps_per_epoch(refit_on, scaled.batch_size - 1) > target


def test_a_rule_is_one_of_three() -> None:
    assert set(REFIT_RULES) == {"same", "steps", "batch"} and REFIT_RULE in REFIT_RULES
    with pytest.raises(ValueError, match="refit rule must be one of same, steps, batch"):
        refit_config(CHOSEN, "double", trained_on=1, refit_on=2)
    with pytest.raises(UsageError, match="--refit-rule must be one of"):
        RefitRequest(study="digits", refit_rule="double").check()


def test_an_unknown_refit_rule_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--study", "digits", "--refit-rule", "double"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refit-rule" in err[0] and "double" in err[0]


def test_the_simulation_splits_the_pool_stratified_and_never_twice() -> None:
    labels = np.repeat(np.arange(5), [100, 100, 100, 100, 123])  # digits-like: 523
    parts = refit_rule.split_pool(labels, train=150, seed=3)
    assert (len(parts.search), len(parts.held_out)) == (150, 174)
    assert len(parts.fitting) == 523 - 174
    every = np.concatenate([parts.search, parts.validation, parts.held_out])
    assert sorted(every) == list(range(523))  # a partition: each image once
    for part in (parts.search, parts.held_out):  # every class in proportion, within one
        counts = np.bincount(labels[part], minlength=5)
        expected = np.bincount(labels, minlength=5) * len(part) / len(labels)
        assert np.all(np.abs(counts - expected) <= 1)
    again = refit_rule.split_pool(labels, train=150, seed=3)
    assert np.array_equal(again.held_out, parts.held_out)
    other = refit_rule.split_pool(labels, train=150, seed=4)
    assert not np.array_equal(other.held_out, parts.held_out)


def test_the_rules_are_compared_paired_with_same() -> None:
    cells = []
    for seed in range(3):
        for name, shift in (("a", 0.0), ("b", 0.2)):
            base = 0.5 + shift + 0.01 * seed
            for rule, gain in (("no refit", -0.05), ("same", 0.0), ("steps", 0.02),
                               ("batch", -0.01)):
                cells.append(refit_rule.Cell(name, seed, rule, base + gain, 15, 64, 120, 1.0))
    rows = {s.rule: s for s in refit_rule.summarize(cells)}
    assert rows["same"].difference is None
    assert rows["steps"].difference == pytest.approx(0.02)
    # Paired: the configurations' 20 points apart cancel, so the interval is tight.
    assert rows["steps"].low == pytest.approx(0.02) and rows["steps"].high == pytest.approx(0.02)
    assert (rows["steps"].wins, rows["steps"].losses) == (6, 0)
    assert (rows["batch"].wins, rows["batch"].losses) == (0, 6)
    assert rows["no refit"].mean == pytest.approx(statistics_mean(cells, "no refit"))
    mean, low, high = refit_rule.t_interval([0.0, 0.02, 0.04])
    assert mean == pytest.approx(0.02) and low < 0 < 0.04 < high
    assert math.isnan(refit_rule.t_interval([0.1])[1])


def statistics_mean(cells: list[refit_rule.Cell], rule: str) -> float:
    values = [c.accuracy for c in cells if c.rule == rule]
    return sum(values) / len(values)


def test_the_table_names_each_rule_and_the_split(tmp_path: Path) -> None:
    cells = [refit_rule.Cell(name, seed, rule, 0.8 + 0.01 * seed + 0.02 * (rule == "same"),
                             15, 64, 120, 2.0)
             for name in ("recipe a", "sampled 1") for seed in (0, 1)
             for rule in ("no refit", *REFIT_RULES)]
    configs = {name: TrialConfig() for name in ("recipe a", "sampled 1")}
    result = refit_rule.Result("digits", 523, (150, 349, 174), configs, cells, 60.0)
    text = refit_rule.table(result)
    assert "pool 523 (train + validation) = fitting 349 + held-out 174" in text
    assert "| same | 82.50 | - | - |" in text
    assert "| steps | 80.50 | -2.00 [-2.00, -2.00] pt | 0/4 |" in text
    path = refit_rule.write(result, tmp_path)
    assert path.read_text().startswith("refit rules on digits")
    assert len((tmp_path / "refit-rule-digits.csv").read_text().splitlines()) == 1 + len(cells)


def test_the_refit_rule_section_needs_cifar10_for_cifar10_transfer(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--only", "refit-rule", "--refit-study", "cifar10-transfer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refit-study cifar10-transfer needs --data-dir" in err[0]
