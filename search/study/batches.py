"""Batch sizes that fit a study's training split: no choice of fewer than MIN_STEPS steps an epoch.

A batch of 256 on 500 training images is 2 optimizer steps an epoch: 30 steps in 15 epochs, 2 of
them warmup. Such a trial hardly trains, its score is mostly noise, and the refit on train +
validation trains it in another regime. So when a study is created, the batch sizes its space
offers are narrowed to those giving at least MIN_STEPS steps an epoch on its training split (as
objectives.train batches: the short last batch is a step), and stored as the study's pinned
categorical choices (`Narrowing.pinned`, the study attr `choices`), which a resume keeps and
search.report reads.

Of those that fit, the MOST largest are searched: on a big training split (CIFAR-10's 45,000
images) the image space's small batches (16, 32), which fit but waste a GPU, are left out, and
the space is 64-512 as before. Kept whatever the rule: the smallest choice when none fits (a
space never loses its parameter), the study's declared batch sizes (`Study.defaults`, its
recipes) and those of the configurations queued to run first (a warm start, a grid's points).
Left alone: a batch size the user named (`--fix`, `--choices`, `--grid`: the user wins) and a
simulating study (curves: its blank training split is not the data it simulates).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import spaces
from search.study.plan import Plan

MIN_STEPS = 8  # optimizer steps an epoch, at least
MOST = 4  # batch sizes searched at most: the largest that fit (a big split keeps 64-512)
PARAM = "batch_size"


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps an epoch of `images` in batches of `batch_size`, as objectives.train
    takes them (uncompiled: the short last batch is a step; a batch is at most the split)."""
    return math.ceil(images / min(batch_size, images)) if images > 0 else 0


def fitting(choices: Sequence[Any], images: int, *, keep: Iterable[Any] = (),
            min_steps: int = MIN_STEPS, most: int = MOST) -> tuple[Any, ...]:
    """The batch sizes of `choices`, in their order, that give at least `min_steps` steps an
    epoch on `images` training images: the `most` largest of them (the smallest choice when
    none does), and those of `keep` that are choices whatever the rule."""
    sizes = [c for c in choices if isinstance(c, int) and not isinstance(c, bool) and c > 0]
    if len(sizes) != len(choices):  # not a space of batch sizes: leave it as it is
        return tuple(choices)
    fit = sorted(c for c in sizes if steps_per_epoch(images, c) >= min_steps)[-most:]
    kept = {*(fit or [min(sizes)]), *(c for c in keep if c in sizes)}
    return tuple(c for c in sizes if c in kept)


def declared(planned: Plan, spec: spaces.Study) -> list[Any]:
    """The batch sizes a new study is to run whatever the rule: its default (a grid's fixed
    recipe) and its recipes', as completed by the plan (search.study.recipes)."""
    found = [spec.defaults.get(PARAM)]
    found += [recipe.params.get(PARAM) for recipe in planned.recipes]
    return [b for b in found if b is not None]


def fit(planned: Plan, spec: spaces.Study, images: int, *,
        queued: Iterable[Mapping[str, Any]] = ()) -> Plan:
    """`planned` (a new study's plan) with its pinned batch sizes fitted to `images` training
    images (see the module); the plan as it is where the rule does not apply."""
    narrowing = planned.narrowing
    pinned = narrowing.pinned.get(PARAM)
    named = set(narrowing.fixed) | set(narrowing.choices) | set(
        planned.grid.axes if planned.grid is not None else ())
    if spec.simulated or not pinned or PARAM in named:
        return planned
    points = planned.grid.points if planned.grid is not None else []
    keep = [*declared(planned, spec), *(c.get(PARAM) for c in queued),
            *(p.get(PARAM) for p in points)]
    chosen = fitting(pinned, images, keep=keep)
    if chosen == tuple(pinned):
        return planned
    pins = {**narrowing.pinned, PARAM: chosen}
    left = ", ".join(str(c) for c in pinned if c not in chosen)
    note = (f"batch size{'s' * (len(pinned) - len(chosen) > 1)} {left} left out: fewer than "
            f"{MIN_STEPS} steps an epoch on {images} training images; searched: "
            f"{', '.join(map(str, chosen))}")
    return dataclasses.replace(
        planned, narrowing=dataclasses.replace(narrowing, pinned=pins),
        attrs={**planned.attrs, "choices": {k: list(v) for k, v in pins.items()}},
        notes=(*planned.notes, note))
