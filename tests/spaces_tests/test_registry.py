from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("name", ["cifar", "Digits", "", "digits "])
def test_unknown_study_lists_the_known_ones(name: str) -> None:
    with pytest.raises(ValueError) as info:
        get_study(name)
    message = str(info.value)
    assert repr(name) in message
    assert "known studies" in message
    for known in STUDIES:
        assert known in message.split("known studies")[1]
