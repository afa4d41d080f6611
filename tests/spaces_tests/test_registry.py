from __future__ import annotations

import importlib
import pkgutil

import pytest

import spaces
from spaces import STUDIES, Study, get_study


def test_get_digits_study() -> None:
    study = get_study("digits")
    assert isinstance(study, Study)
    assert study.name == "digits"
    assert study is STUDIES["digits"]
    assert study.epochs > 0 and study.trials > 0
    assert study.direction in ("maximize", "minimize")
    assert callable(study.space) and callable(study.load_task)


def test_registry_keys_are_the_study_names() -> None:
    assert "digits" in STUDIES
    assert all(name == study.name for name, study in STUDIES.items())


def test_every_study_a_module_of_spaces_defines_is_registered() -> None:
    # A shipped study is its module under spaces/ and its line in spaces.STUDIES, whose order
    # is that of the lists the command line prints: a module whose study is missing there fails.
    defined: dict[str, Study] = {}
    for info in pkgutil.iter_modules(spaces.__path__):
        module = importlib.import_module(f"{spaces.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Study):
                assert defined.setdefault(value.name, value) is value, f"two {value.name!r}"
    assert {"digits", "mnist", "fashion_mnist", "curves"} <= set(defined)
    assert set(STUDIES) == set(defined)
    assert all(STUDIES[name] is study for name, study in defined.items())


@pytest.mark.parametrize("name", ["cifar", "Digits", "", "digits "])
def test_unknown_study_lists_the_known_ones(name: str) -> None:
    with pytest.raises(ValueError) as info:
        get_study(name)
    message = str(info.value)
    assert repr(name) in message
    assert "known studies" in message
    for known in STUDIES:
        assert known in message.split("known studies")[1]
