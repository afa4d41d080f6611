"""A new study's batch sizes fitted to its training split (search.study.batches): no choice of
fewer than 8 optimizer steps an epoch, the study's declared ones kept, the user's word first,
stored as the study's pinned choices."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution

import spaces
from search.run import main
from search.study import batches
from search.study.narrowing import as_stored
from search.study.plan import Plan, SearchOptions, Stored, plan
from spaces.vision import BATCH_SIZES
from tests.search_tests.conftest import load_study


@pytest.mark.parametrize(("images", "batch", "steps"), [
    (500, 64, 8), (500, 128, 4), (500, 256, 2), (150, 16, 10), (150, 32, 5),
    (512, 64, 8), (10, 64, 1), (45_000, 512, 88),
])
def test_steps_an_epoch_count_the_short_last_batch(images: int, batch: int, steps: int) -> None:
    assert batches.steps_per_epoch(images, batch) == steps == math.ceil(
        images / min(batch, images))


def test_the_batch_sizes_that_fit_a_split() -> None:
    # cifar10-transfer's 500 training images: 64 is 8 steps, 128 only 4.
    assert batches.fitting(BATCH_SIZES, 500) == (16, 32, 64)
    # A big split keeps the largest four: the image space as it was before it was widened.
    assert batches.fitting(BATCH_SIZES, 45_000) == (64, 128, 256, 512)
    assert batches.fitting(BATCH_SIZES, 1_500) == (16, 32, 64, 128)
    # Nothing fits: the smallest stays, so the space keeps its parameter.
    assert batches.fitting(BATCH_SIZES, 40) == (16,)
    # What is kept whatever the rule, if it is a choice at all; the order is the space's.
    assert batches.fitting(BATCH_SIZES, 500, keep=(256, 100, None)) == (16, 32, 64, 256)
    assert batches.fitting((64, 16, 32), 150, keep=(32,)) == (16, 32)
    assert batches.fitting(("small", "big"), 10) == ("small", "big")  # not batch sizes


def _plan(study: str, **options: Any) -> tuple[spaces.Study, Plan]:
    spec = spaces.get_study(study)
    return spec, plan(SearchOptions(study=study, **options), spec, Stored(None, 0))


def test_a_new_cifar10_transfer_study_pins_the_batch_sizes_that_fit() -> None:
    spec, planned = _plan("cifar10-transfer")
    fitted = batches.fit(planned, spec, 500)
    assert fitted.narrowing.pinned["batch_size"] == (16, 32, 64)
    assert fitted.attrs["choices"]["batch_size"] == [16, 32, 64]  # stored with the study
    assert spec.defaults["batch_size"] in fitted.narrowing.pinned["batch_size"]  # the recipes'
    assert not fitted.narrowing  # not the user's narrowing: nothing to tag or refuse on resume
    assert fitted.notes[-1] == ("batch sizes 128, 256, 512 left out: fewer than 8 steps an "
                                "epoch on 500 training images; searched: 16, 32, 64")
    # Every other pinned choice is as it was, and a resume reads the fitted ones back.
    assert {k: v for k, v in fitted.narrowing.pinned.items() if k != "batch_size"} == {
        k: v for k, v in planned.narrowing.pinned.items() if k != "batch_size"}
    resumed = as_stored(spec, fitted.settings, fitted.attrs)
    assert resumed.pinned["batch_size"] == (16, 32, 64)


def test_what_is_queued_to_run_first_keeps_its_batch_size() -> None:
    spec, planned = _plan("cifar10-transfer")
    fitted = batches.fit(planned, spec, 500, queued=[{"batch_size": 256}, {"lr": 0.1}])
    assert fitted.narrowing.pinned["batch_size"] == (16, 32, 64, 256)
    # digits on 150 images: 16 is 10 steps, 32 only 5; a recipe's batch of 32 stays.
    spec, planned = _plan("digits")
    assert batches.fit(dataclasses.replace(planned, recipes=()), spec, 150).narrowing.pinned[
        "batch_size"] == (16,)
    recipe = SimpleNamespace(name="mine", params={"batch_size": 32})
    fitted = batches.fit(dataclasses.replace(planned, recipes=(recipe,)), spec, 150)
    assert fitted.narrowing.pinned["batch_size"] == (16, 32)
    assert fitted.attrs["choices"]["batch_size"] == [16, 32]
    # As the plan completes them: the study's recipes run on a batch size it searches.
    recipes = batches.fit(planned, spec, 150).narrowing.pinned["batch_size"]
    assert {r.params["batch_size"] for r in planned.recipes} <= set(recipes)


@pytest.mark.parametrize("options", [
    {"choices": [("batch_size", "128,256")]},
    {"fix": [("batch_size", "256")]},
    {"sampler": "grid", "grid": [("batch_size", "128,256")]},
])
def test_the_users_batch_sizes_win(options: dict[str, Any]) -> None:
    spec, planned = _plan("cifar10-transfer", **options)
    assert batches.fit(planned, spec, 500) is planned


def test_a_simulating_study_and_a_split_that_fits_everything_are_left_alone() -> None:
    spec, planned = _plan("curves")  # its blank training split is not what it simulates
    assert batches.fit(planned, spec, 100) is planned
    spec, planned = _plan("cifar10-transfer")
    assert batches.fit(planned, spec, 10_000) is not planned  # 16 and 32 left out
    spec, planned = _plan("digits")
    assert batches.fit(planned, spec, 10_000) is planned  # 16, 32, 64 all fit


@pytest.mark.slow
def test_a_new_digits_study_stores_the_batch_sizes_that_fit_and_a_resume_keeps_them(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--study", "digits", "--epochs", "1", "--pruner", "none"]
    assert main([*tiny, "--trials", "2"]) == 0
    assert ("batch sizes 32, 64 left out: fewer than 8 steps an epoch on 150 training images; "
            "searched: 16") in capsys.readouterr().out
    study = load_study(workdir)
    assert study.user_attrs["choices"]["batch_size"] == [16]
    assert main([*tiny, "--trials", "3"]) == 0  # resumed: the stored choices
    study = load_study(workdir)
    assert [t.distributions["batch_size"] for t in study.trials] == [
        CategoricalDistribution((16,))] * 3
    # The user's choices win: stored as asked, over the space's own pinned choices.
    assert main([*tiny, "--trials", "2", "--name", "mine", "--choices",
                 "batch_size=32,64"]) == 0
    mine = load_study(workdir, "mine")
    assert mine.user_attrs["choices"]["batch_size"] == [16, 32, 64]
    assert {t.params["batch_size"] for t in mine.trials} <= {32, 64}
