"""A study's fixed settings: what it was created with, kept for every trial and every resume.

They are the Optuna study's user attrs (the store's layout, unchanged): `space`, `seed`,
`epochs`, `objectives` (names joined by commas), `teacher` (its URI or path, password masked),
`teacher_arch`, and for image studies `backbone`, `resolution` (a side in pixels, or "search")
and `init` (imagenet, random or file). `StudySettings` is their one typed form: made from the
attrs (`from_attrs`), written back (`attrs`), and the source of the trials' settings
(`trial_settings`) and of the task's options (`task_options`). `reconcile` decides what a search
that opens a study gets: a new study takes what was asked (or the defaults); a resume keeps what
is stored, and an option asked differently is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.core.errors import UsageError

if TYPE_CHECKING:  # spaces imports PyTorch: search.report reads settings without it
    import spaces

RESOLUTION_SEARCH = "search"  # --resolution search, and its stored form: resolutions searched
# Settings a study cannot take on once it has trials, even if it was made without them:
# objectives fix its directions, a teacher its loss choices.
STRICT = ("objectives", "teacher")
_SHOWN = {"epochs": "{} epochs per trial", "init": "{} initial weights"}


@dataclass(frozen=True)
class StudySettings:
    space: str  # the search space's name (spaces.STUDIES)
    seed: int  # of the sampler, the data split and every trial's training
    epochs: int  # per trial
    objectives: tuple[str, ...] = ()  # () = the study's own metric alone
    teacher: str | None = None  # as stored: masked
    teacher_arch: str | None = None  # the teacher's architecture, for a state dict file
    backbone: str | None = None  # image studies
    resolution: int | None = 0  # image side on the device: 0 = as stored, None = searched
    init: str | None = None  # image studies: imagenet, random or file

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], spec: spaces.Study) -> StudySettings:
        """The settings of a stored study; what it does not hold is the space's default."""
        resolution = attrs.get("resolution", 0)
        return cls(
            space=str(attrs.get("space", spec.name)), seed=int(attrs.get("seed", spec.seed)),
            epochs=int(attrs.get("epochs", spec.epochs)),
            objectives=stored_objectives(attrs),
            teacher=attrs.get("teacher"), teacher_arch=attrs.get("teacher_arch"),
            backbone=attrs.get("backbone"),
            resolution=None if resolution == RESOLUTION_SEARCH else int(resolution),
            init=attrs.get("init"),
        )

    def attrs(self, *, image: bool) -> dict[str, Any]:
        """The study's user attrs, as they have always been written (`image`: an image study,
        which also stores its backbone, resolution and initial weights)."""
        attrs: dict[str, Any] = {"epochs": self.epochs,
                                 "objectives": ",".join(self.objectives) or None,
                                 "teacher": self.teacher}
        if image:
            attrs.update(backbone=self.backbone, init=self.init,
                         resolution=RESOLUTION_SEARCH if self.resolution is None
                         else self.resolution)
        attrs.update(space=self.space, seed=self.seed)
        if self.teacher_arch:
            attrs["teacher_arch"] = self.teacher_arch
        return attrs

    def trial_settings(self) -> spaces.Settings:
        import spaces

        return spaces.Settings(epochs=self.epochs, seed=self.seed, resolution=self.resolution,
                               distill=self.teacher is not None)

    def task_options(self, spec: spaces.Study, *, cache_dir: Path | None,
                     data_dir: str | Path | None, weights: str | Path | None,
                     time_scale: float | None = None) -> spaces.TaskOptions:
        """Where the data and weights come from: the command line's folders, the study's
        backbone and initial weights."""
        import spaces

        return spaces.TaskOptions(
            seed=self.seed, cache_dir=cache_dir,
            data_dir=Path(data_dir).expanduser() if data_dir is not None else spec.data_dir,
            backbone=self.backbone, weights=Path(weights).expanduser() if weights else None,
            pretrained=self.init != "random", time_scale=time_scale,
        )


def stored_objectives(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """A study's objectives as stored (names joined by commas); () = its metric alone."""
    objectives = attrs.get("objectives")
    return tuple(str(objectives).split(",")) if objectives else ()


def reconcile(stored: Mapping[str, Any] | None, requested: Mapping[str, Any],
              defaults: Mapping[str, Any], *, name: str, trials: int = 0) -> dict[str, Any]:
    """The value of each setting in `defaults` for a search that opens study `name`.

    `stored`: the study's attrs, None for a new study; `requested`: the command line's values,
    None where an option was left out; `trials`: how many the study has. A new study takes what
    was asked, else the default. A resume keeps what is stored; an option asked differently is
    refused (one line), and so is one the study was made without once it has trials, for
    `STRICT` settings. A setting a study was made without (an older version's) takes what was
    asked, else the default.
    """
    if stored is None:
        return {k: requested[k] if requested[k] is not None else defaults[k] for k in defaults}
    fixed = {}
    for key, default in defaults.items():
        kept, wanted = stored.get(key), requested[key]
        strict = key in STRICT and trials > 0
        if wanted is not None and wanted != kept and (kept is not None or strict):
            shown = _SHOWN.get(key, key + " {}")
            raise UsageError(
                f"study {name!r} was created with {shown.format(kept or 'none')}, not "
                f"{shown.format(wanted)}: leave the option out to resume it, or give --name NEW "
                "to start another study"
            )
        fixed[key] = next((v for v in (kept, wanted, default) if v is not None), None)
    return fixed
