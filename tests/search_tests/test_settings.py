"""A study's fixed settings: one typed record read from and written to the study's attrs (the
stored layout unchanged), and the rules by which a resume keeps or refuses them."""

from __future__ import annotations

from pathlib import Path

import pytest

import spaces
from search.core.errors import UsageError
from search.study.settings import RESOLUTION_SEARCH, StudySettings, reconcile

DEFAULTS = {"epochs": 20, "objectives": None, "teacher": None, "backbone": "resnet18",
            "resolution": RESOLUTION_SEARCH, "init": "imagenet"}
NOTHING = dict.fromkeys(DEFAULTS)  # every option left out


def test_a_new_study_takes_what_is_asked_else_the_defaults() -> None:
    fixed = reconcile(None, {**NOTHING, "epochs": 5, "backbone": "resnet50"}, DEFAULTS,
                      name="s")
    assert fixed == {**DEFAULTS, "epochs": 5, "backbone": "resnet50"}


def test_a_resume_keeps_what_is_stored_when_the_option_is_left_out() -> None:
    stored = {**DEFAULTS, "epochs": 5, "resolution": 64}
    assert reconcile(stored, NOTHING, DEFAULTS, name="s", trials=3) == stored


def test_a_resume_that_asks_the_same_is_taken() -> None:
    stored = {**DEFAULTS, "epochs": 5}
    assert reconcile(stored, {**NOTHING, "epochs": 5}, DEFAULTS, name="s", trials=3) == stored


@pytest.mark.parametrize(("key", "kept", "wanted", "line"), [
    ("epochs", 5, 7, "study 's' was created with 5 epochs per trial, not 7 epochs per trial"),
    ("init", "imagenet", "random",
     "study 's' was created with imagenet initial weights, not random initial weights"),
    ("backbone", "resnet18", "resnet50", "study 's' was created with backbone resnet18, not "
                                         "backbone resnet50"),
    ("resolution", RESOLUTION_SEARCH, 32, "study 's' was created with resolution search, not "
                                          "resolution 32"),
])
def test_a_resume_that_asks_otherwise_is_refused_in_one_line(key: str, kept: object,
                                                            wanted: object, line: str) -> None:
    with pytest.raises(UsageError) as refused:
        reconcile({**DEFAULTS, key: kept}, {**NOTHING, key: wanted}, DEFAULTS, name="s",
                  trials=1)
    assert str(refused.value).startswith(line)
    assert str(refused.value).endswith("leave the option out to resume it, or give --name NEW "
                                       "to start another study")


@pytest.mark.parametrize("key", ["objectives", "teacher"])
def test_objectives_and_a_teacher_cannot_be_added_once_there_are_trials(key: str) -> None:
    wanted = {**NOTHING, key: "val_accuracy,val_ece" if key == "objectives" else "runs:/x/m"}
    with pytest.raises(UsageError, match=f"was created with {key} none, not {key} "):
        reconcile(DEFAULTS, wanted, DEFAULTS, name="s", trials=1)
    # Before the first trial, a study made without them may still take them on.
    assert reconcile(DEFAULTS, wanted, DEFAULTS, name="s", trials=0)[key] == wanted[key]


def test_a_setting_an_older_study_lacks_takes_what_is_asked() -> None:
    older = {"epochs": 20}  # stored before backbones and resolutions were settings
    fixed = reconcile(older, {**NOTHING, "backbone": "resnet50"}, DEFAULTS, name="s", trials=9)
    assert fixed["backbone"] == "resnet50" and fixed["init"] == "imagenet"


def _image_study() -> spaces.Study:
    return spaces.get_study("cifar10")


@pytest.mark.parametrize(("stored", "resolution"), [(RESOLUTION_SEARCH, None), (64, 64)])
def test_the_record_reads_and_writes_the_stored_attrs(stored: object,
                                                      resolution: int | None) -> None:
    spec = _image_study()
    attrs = {"epochs": 7, "objectives": "val_accuracy,val_ece", "teacher": None,
             "backbone": "resnet18", "resolution": stored, "init": "random", "space": "cifar10",
             "seed": 3}
    fixed = StudySettings.from_attrs(attrs, spec)
    assert fixed.resolution == resolution and fixed.objectives == ("val_accuracy", "val_ece")
    assert fixed.attrs(image=True) == attrs  # the same layout back
    settings = fixed.trial_settings()
    assert (settings.epochs, settings.seed, settings.resolution, settings.distill) == (
        7, 3, resolution, False)
    options = fixed.task_options(spec, cache_dir=None, data_dir="~/data", weights=None)
    assert (options.seed, options.backbone, options.pretrained) == (3, "resnet18", False)
    assert options.data_dir == Path("~/data").expanduser()


def test_a_study_without_images_stores_no_image_settings() -> None:
    spec = spaces.get_study("digits")
    fixed = StudySettings.from_attrs({"epochs": 20, "objectives": None,
                                      "teacher": "runs:/abc/model", "space": "digits",
                                      "seed": 0, "teacher_arch": "resnet18"}, spec)
    assert fixed.resolution == 0  # as stored
    assert fixed.trial_settings().distill
    assert fixed.attrs(image=False) == {"epochs": 20, "objectives": None,
                                        "teacher": "runs:/abc/model", "space": "digits",
                                        "seed": 0, "teacher_arch": "resnet18"}
    assert fixed.task_options(spec, cache_dir=None, data_dir=None,
                              weights=None).data_dir == spec.data_dir


def test_what_a_study_does_not_hold_is_its_space_default() -> None:
    spec = spaces.get_study("digits")
    fixed = StudySettings.from_attrs({}, spec)
    assert (fixed.space, fixed.epochs, fixed.seed, fixed.objectives, fixed.teacher) == (
        "digits", spec.epochs, spec.seed, (), None)
