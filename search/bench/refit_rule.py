"""`python -m search.bench --only refit-rule`: which refit rule keeps the regime a configuration
was chosen in (search.review.refit's REFIT_RULES), on a simulation that never reads a test split.

A search chooses a configuration training on the train split; search.refit trains it again on
train + validation (3x the images in cifar10-transfer, 3.5x in digits) and tests it once. The
rules differ in how the configuration meets the extra images: "same" epochs and batch size (more
steps), the same number of "steps" (fewer epochs), or a "batch" as much larger (the same steps
an epoch). Which of them gives the better model is measured inside the labelled pool, the study's
train + validation (its seed's split); the test split is replaced by an empty one.

For each seed the pool is split, stratified, into a held-out rest (HOLDOUT of it), which only
scores, and a fitting part; a train-sized subset of the fitting part is the "search regime",
the rest of the fitting part its validation. The configurations are the quality benchmark's
two recipes (search.bench.quality.RECIPES, at the study's default batch size) and the best
`keep` of `sampled` configurations drawn from the study's space (batch sizes fitted to the
search regime's images as a new study's are: search.study.batches), chosen on seed 0's
validation: a short search. Each configuration, on each seed (training seeded with it too), is
refit on the whole fitting part under every rule, and trained in its search regime for
reference ("no refit"); each model is scored once on the held-out rest. The rules are
compared paired on the same configuration and seed: mean held-out accuracy, the mean
difference to "same" with a 95% t interval, and wins / losses. The table is printed and written
to mlruns/bench/refit-rule-<study>.md and .csv.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import optuna
import torch

import spaces
from objectives.config import TrialConfig
from objectives.data import Split, Task
from objectives.train import fine_tune, predict
from search.bench.quality import RECIPES
from search.review.refit import REFIT_RULES, refit_config
from search.study import batches
from search.study.narrowing import Narrowing, pinned_choices

HOLDOUT = 1 / 3  # of the pool: scores only
NO_REFIT = "no refit"  # the reference row: the model of the search regime itself
OUT = Path("mlruns") / "bench"
# Images fine_tune validates on each epoch, which nothing here reads: a whole split would cost
# as much as a fifth of an epoch's training. Scores come from one prediction at the end.
WATCHED = 10


@dataclass(frozen=True)
class Parts:
    """One seed's stratified split of the pool: indices into it."""

    search: np.ndarray  # the search regime's training images (as many as the study's train)
    validation: np.ndarray  # the rest of the fitting part: the short search's validation
    held_out: np.ndarray  # scores only

    @property
    def fitting(self) -> np.ndarray:
        return np.concatenate([self.search, self.validation])


@dataclass
class Cell:
    config: str
    seed: int
    rule: str
    accuracy: float
    epochs: int
    batch_size: int
    steps: int
    seconds: float


@dataclass
class Result:
    study: str
    pool: int
    parts: tuple[int, int, int]  # search regime, fitting part, held-out rest
    configs: dict[str, TrialConfig]
    cells: list[Cell]
    seconds: float
    chosen: dict[str, float] = dataclasses.field(default_factory=dict)  # short search: val acc


def stratified(labels: np.ndarray, sizes: Sequence[int], *, seed: int) -> list[np.ndarray]:
    """Indices of `labels` in parts of `sizes` (the last part takes the rest), each class spread
    over the parts in proportion: classes are interleaved by their rank within the class."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # by class, shuffled within
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = (np.arange(len(members)) + rng.random()) / len(members)
    spread = order[np.argsort(rank[order], kind="stable")]
    bounds = np.cumsum([0, *sizes])
    return [np.sort(spread[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)] + [
        np.sort(spread[bounds[-1]:])]


def split_pool(labels: np.ndarray, *, train: int, seed: int) -> Parts:
    held = round(len(labels) * HOLDOUT)
    held_out, search, validation = stratified(labels, (held, train), seed=seed)
    return Parts(search=search, validation=validation, held_out=held_out)


def _take(pool: Split, index: np.ndarray) -> Split:
    return Split(pool.x[torch.as_tensor(index)], pool.y[torch.as_tensor(index)])


def _task(base: Task, pool: Split, train: np.ndarray, val: np.ndarray) -> Task:
    """`base` training on `train` of the pool, its per-epoch metrics on `val` (read by
    nothing here), and an empty test split: the simulation never reads the study's test."""
    empty = Split(pool.x[:0], pool.y[:0])
    data = dataclasses.replace(base.data, train=_take(pool, train), val=_take(pool, val),
                               test=empty)
    return Task(base.name, data, base.make_model)


def _score(config: TrialConfig, task: Task, held_out: Split, *, device: str) -> float:
    """Held-out accuracy of `config` trained on `task`'s train split."""
    model = fine_tune(config, task, device=device).model
    logits = predict(model, held_out, task, resolution=config.resolution)
    return float((logits.argmax(dim=1) == held_out.y).float().mean())


def configurations(spec: spaces.Study, *, train: int, epochs: int, sampled: int,
                   seed: int = 0) -> dict[str, TrialConfig]:
    """The recipes (at the study's default batch size) and `sampled` configurations drawn
    from the study's space, its batch sizes fitted to `train` images."""
    settings = spaces.Settings(epochs=epochs, seed=spec.seed, resolution=0)
    batch = spec.defaults.get("batch_size", TrialConfig().batch_size)
    found = {f"recipe {name}": recipe.replace(epochs=epochs, batch_size=batch)
             for name, recipe in RECIPES.items()}
    pins = pinned_choices(spec.space, settings)
    if "batch_size" in pins:
        pins = {"batch_size": batches.fitting(pins["batch_size"], train)}
    space = Narrowing(pinned=pins).apply(spec.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(sampled):
        trial = study.ask()
        config = space(trial, settings)
        study.tell(trial, 0.0)
        found[f"sampled {trial.number}"] = cast(TrialConfig, config).replace(seed=0)
    return found


def simulate(study: str, *, seeds: Sequence[int], sampled: int = 6, keep: int = 2,
             epochs: int | None = None, data_dir: Path | None = None,
             cache_dir: Path | None = None, device: str = "cpu",
             progress: bool = True) -> Result:
    started = time.perf_counter()
    spec = spaces.get_study(study)
    base = spec.task(spaces.TaskOptions(data_dir=data_dir, cache_dir=cache_dir, seed=spec.seed))
    data = base.data
    pool = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    labels = pool.y.numpy()
    train = len(data.train)
    epochs = epochs or spec.epochs
    candidates = configurations(spec, train=train, epochs=epochs, sampled=sampled)
    first = split_pool(labels, train=train, seed=seeds[0])
    fitting_size = len(first.fitting)
    # The short search: each sampled configuration in its search regime, scored on seed 0's
    # validation (the fitting part's rest); the best `keep` go on with the recipes.
    search_task = _task(base, pool, first.search, first.validation[:WATCHED])
    validation = _take(pool, first.validation)
    chosen: dict[str, float] = {}
    for name, config in candidates.items():
        if name.startswith("sampled"):
            chosen[name] = _score(config.replace(seed=seeds[0]), search_task, validation,
                                  device=device)
    best = sorted(chosen, key=lambda n: -chosen[n])[:keep]
    configs = {n: c for n, c in candidates.items() if not n.startswith("sampled") or n in best}
    if progress:
        print(f"refit-rule: {study}: pool {len(labels)} = held-out {len(first.held_out)} + "
              f"fitting {fitting_size} (search regime {len(first.search)}); short search "
              + ", ".join(f"{n} {chosen[n]:.3f}" for n in sorted(chosen)), flush=True)
    cells: list[Cell] = []
    for seed in seeds:
        parts = split_pool(labels, train=train, seed=seed)
        held_out = _take(pool, parts.held_out)
        watched = parts.validation[:WATCHED]
        searched = _task(base, pool, parts.search, watched)
        refitting = _task(base, pool, parts.fitting, watched)
        for name, config in configs.items():
            config = config.replace(seed=seed)
            runs = [(NO_REFIT, config, searched)] + [
                (rule, refit_config(config, rule, trained_on=len(parts.search),
                                    refit_on=len(parts.fitting)), refitting)
                for rule in REFIT_RULES]
            for rule, run, task in runs:
                began = time.perf_counter()
                accuracy = _score(run, task, held_out, device=device)
                images = len(task.data.train)
                cells.append(Cell(name, seed, rule, accuracy, run.epochs, run.batch_size,
                                  run.epochs * batches.steps_per_epoch(images, run.batch_size),
                                  time.perf_counter() - began))
            if progress:
                print(f"refit-rule: {study} seed {seed} {name}: " + ", ".join(
                    f"{c.rule} {c.accuracy:.3f}" for c in cells[-len(runs):]), flush=True)
    return Result(study, len(labels), (train, fitting_size, len(first.held_out)), configs,
                  cells, time.perf_counter() - started, chosen)


@dataclass(frozen=True)
class Summary:
    rule: str
    mean: float
    difference: float | None  # to "same", paired; None for "same" itself
    low: float | None
    high: float | None
    wins: int
    losses: int
    epochs: float
    steps: float
    seconds: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t interval of the mean."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / (
        math.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarize(cells: Sequence[Cell]) -> list[Summary]:
    by = {(c.config, c.seed, c.rule): c for c in cells}
    keys = sorted({(c.config, c.seed) for c in cells})
    rows = []
    for rule in (NO_REFIT, *REFIT_RULES):
        mine = [by[(name, seed, rule)] for name, seed in keys]
        diffs = [c.accuracy - by[(c.config, c.seed, "same")].accuracy for c in mine]
        mean, low, high = t_interval(diffs)
        same = rule == "same"
        rows.append(Summary(
            rule, statistics.fmean(c.accuracy for c in mine), None if same else mean,
            None if same else low, None if same else high, sum(d > 0 for d in diffs),
            sum(d < 0 for d in diffs), statistics.fmean(c.epochs for c in mine),
            statistics.fmean(c.steps for c in mine), statistics.fmean(c.seconds for c in mine)))
    return rows


def table(result: Result) -> str:
    search, fitting, held = result.parts
    seeds = sorted({c.seed for c in result.cells})
    lines = [
        f"refit rules on {result.study}: pool {result.pool} (train + validation) = fitting "
        f"{fitting} + held-out {held}; search regime {search} images, refit on {fitting} "
        f"({fitting / search:.1f}x); {len(result.configs)} configurations x {len(seeds)} seeds "
        f"({','.join(map(str, seeds))}); {result.seconds / 60:.1f} min",
        "",
        "| rule | held-out accuracy | vs same (paired, 95% CI) | wins/losses | epochs | steps "
        "| s a run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summarize(result.cells):
        versus = ("-" if s.difference is None else
                  f"{100 * s.difference:+.2f} [{100 * (s.low or 0):+.2f}, "
                  f"{100 * (s.high or 0):+.2f}] pt")
        wins = "-" if s.difference is None else f"{s.wins}/{s.losses}"
        lines.append(f"| {s.rule} | {100 * s.mean:.2f} | {versus} | {wins} | {s.epochs:.1f} | "
                     f"{s.steps:.0f} | {s.seconds:.1f} |")
    lines += ["", "Per configuration, mean held-out accuracy over the seeds (%):", "",
              "| configuration | " + " | ".join((NO_REFIT, *REFIT_RULES)) + " |",
              "| --- |" + " --- |" * (1 + len(REFIT_RULES))]
    for name, config in result.configs.items():
        means = [statistics.fmean(c.accuracy for c in result.cells
                                  if c.config == name and c.rule == rule)
                 for rule in (NO_REFIT, *REFIT_RULES)]
        described = (f"{name} ({config.loss}, {config.optimizer} lr {config.lr:.2g}, "
                     f"batch {config.batch_size}, freeze {config.freeze_depth})")
        lines.append(f"| {described} | " + " | ".join(f"{100 * m:.1f}" for m in means) + " |")
    return "\n".join(lines)


def write(result: Result, folder: Path = OUT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"refit-rule-{result.study}.md"
    path.write_text(table(result) + "\n")
    with (folder / f"refit-rule-{result.study}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in dataclasses.fields(Cell)])
        writer.writerows(dataclasses.astuple(c) for c in result.cells)
    return path


def run(studies: Sequence[str], *, seeds: Sequence[int], sampled: int, keep: int,
        data_dir: Path | None, device: str) -> list[Result]:
    """Each study's simulation, its table printed and written."""
    results = []
    for study in studies:
        result = simulate(study, seeds=seeds, sampled=sampled, keep=keep,
                          data_dir=data_dir if study != "digits" else None,
                          cache_dir=Path("mlruns") / "cache", device=device)
        print(table(result))
        print(f"refit-rule: written to {write(result)}", flush=True)
        results.append(result)
    return results
