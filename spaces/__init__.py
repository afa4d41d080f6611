"""Studies by name: each module defines one search space and the study's fixed settings."""

from __future__ import annotations

from spaces.base import Study
from spaces.digits import STUDY as DIGITS

STUDIES: dict[str, Study] = {study.name: study for study in (DIGITS,)}


def get_study(name: str) -> Study:
    try:
        return STUDIES[name]
    except KeyError:
        known = ", ".join(sorted(STUDIES))
        raise ValueError(f"unknown study {name!r}; known studies: {known}") from None


__all__ = ["STUDIES", "Study", "get_study"]
