"""Pieces of opening a search, without a search: the objectives a study optimizes, the initial
weights it records, and what an existing study holds."""

from __future__ import annotations

import optuna
import pytest

import spaces
from search.core.errors import UsageError, first_line
from search.execution.session import _stored
from search.study.plan import initial_weights, objectives


def test_a_study_optimizes_its_own_metric_unless_objectives_are_given() -> None:
    spec = spaces.get_study("digits")
    assert objectives(spec, (), "tpe") == ((spec.metric,), [spec.direction])
    assert objectives(spec, ("accuracy", "ece"), "tpe") == (
        ("val_accuracy", "val_ece"), ["maximize", "minimize"])


@pytest.mark.parametrize(("names", "sampler", "refusal"), [
    (("accuracy", "speed"), "tpe", "--objectives takes distinct names among accuracy, ece, "
                                   "cross_entropy, f1, got accuracy,speed"),
    (("ece", "ece"), "tpe", "--objectives takes distinct names"),
    (("accuracy", "ece"), "cmaes", "the cmaes sampler optimizes one objective"),
])
def test_objectives_that_cannot_be_optimized_are_refused(names: tuple[str, ...], sampler: str,
                                                         refusal: str) -> None:
    with pytest.raises(UsageError) as refused:
        objectives(spaces.get_study("digits"), names, sampler)
    assert str(refused.value).startswith(refusal)


def test_the_initial_weights_a_study_records() -> None:
    assert initial_weights("resnet18.pt", True) == "file"
    assert initial_weights(None, False) == "random"
    assert initial_weights(None, True) == "imagenet"


def test_what_an_existing_study_holds() -> None:
    storage = optuna.storages.InMemoryStorage()
    assert _stored(storage, "new") == (None, 0)
    study = optuna.create_study(storage=storage, study_name="old", direction="maximize")
    study.set_user_attr("epochs", 7)
    study.enqueue_trial({})
    assert _stored(storage, "old") == ({"epochs": 7}, 1)


def test_a_one_line_reason_skips_the_blank_lines_a_driver_starts_with() -> None:
    assert first_line(RuntimeError("\n  connection refused\nDETAIL: ...")) == "connection refused"
    assert first_line(RuntimeError("\n\n")) == "RuntimeError"
    assert first_line(ValueError()) == "ValueError"
