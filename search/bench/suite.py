"""`python -m search.bench`: the figures the README quotes, measured in one run on this machine.

1. overhead: the same trials as bare `fine_tune` loops and through the search (Optuna storage,
   MLflow tracking, artifacts); the overhead is the extra wall time as a share of trial time.
2. pruning: pruners compared at equal epoch budgets on the curves and digits studies
   (`search.bench.pruning`): the best value each finds with the unpruned search's epochs, and
   the epochs it needs to match that search's best.
3. quickstart: `python -m search.run --study digits` in a fresh folder (pretraining included).
4. throughput: training images per second of `fine_tune` (uint8 data and augmentation on the
   device) against a DataLoader + per-image PIL transforms loop (`search.bench.throughput`).
5. workers: trials per minute of the digits study with 1 and with 2 worker processes, each
   worker with the same threads (one core each here).
6. gpu: the GPU acceptance run (`search.bench.gpu`): throughput, a cifar10 search, refit,
   distillation, trials per GPU, memory after pruned trials, a real out-of-memory trial, cuDNN
   autotuning and --compile, each step time-limited; the report in mlruns/bench/gpu.md and
   gpu.json. With no --only it runs when a GPU is there; `--device cpu` runs it at toy sizes.
7. quality: the cifar10-transfer study's default search against two standard recipes on real
   photographs (`search.bench.quality`); only with `--only quality --data-dir PATH`.
8. scale: coordination at 1, 8, 32 and 64 workers of the curves study on the journal file,
   PostgreSQL and Redis with MLflow on SQLite and on a server (`search.bench.scale`); only with
   `--only scale`, about 20 minutes.
9. refit-rule: search.refit's rules (same epochs and batch, same steps, batch scaled with the
   data) compared inside the labelled pool, never on test (`search.bench.refit_rule`): digits,
   and cifar10-transfer with --data-dir; only with `--only refit-rule`.

Rounds alternate bare and tracked runs so that a noisy neighbour hurts both; medians are quoted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import optuna

import spaces
from objectives.errors import InputError
from objectives.train import fine_tune
from search.core.cli import Parser, positive_float, positive_int
from search.core.errors import UsageError
from search.core.runtime import pick_device, quiet_libraries
from search.execution.session import SearchOptions, open_search
from search.storage.optuna_storage import open_storage
from spaces import Settings

SECTIONS = ("overhead", "pruning", "quickstart", "throughput", "workers", "gpu", "quality",
            "scale", "refit-rule")
ON_REQUEST = ("quality", "scale", "refit-rule")  # not part of a run without --only


def _sample_params(count: int, *, seed: int, epochs: int) -> list[dict[str, Any]]:
    """`count` parameter sets drawn from the digits space (random sampler, seeded)."""
    spec = spaces.get_study("digits")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(count):
        trial = study.ask()
        spec.space(trial, Settings(epochs=epochs, seed=spec.seed))
        drawn.append(dict(trial.params))
        study.tell(trial, 0.0)
    return drawn


def _fixed(params: dict[str, Any]) -> optuna.Trial:
    """A FixedTrial, which spaces accept like a Trial (they only call suggest_*)."""
    return cast(optuna.Trial, optuna.trial.FixedTrial(params))


def _stores(folder: Path) -> dict[str, Any]:
    return {"storage": str(folder / "optuna.journal"),
            "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}


def median_interval(values: list[float], *, confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap interval for the median of `values` (resampled with replacement).

    The overhead is a median of noisy pairs: on a shared 2-core machine one pair's ratio swings
    by +-20%, so 36 pairs pin the median only to a few points, and a figure without its
    interval cannot say whether a 2% target was met.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, data.size, (resamples, data.size))], axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def overhead(*, trials: int, rounds: int, workdir: Path) -> dict[str, float]:
    """Bare and tracked runs of the same trials, interleaved trial by trial.

    Each trial runs bare and through the search back to back (alternating which goes first);
    the overhead is the median over all pairs of tracked/bare - 1, which resists the minutes-long
    swings of a shared machine better than a ratio of totals.
    """
    spec = spaces.get_study("digits")
    params = _sample_params(trials, seed=1, epochs=spec.epochs)
    ratios, extra, bare_total, tracked_total = [], [], 0.0, 0.0
    for r in range(rounds):
        search = open_search(SearchOptions(
            study="digits", name=f"overhead-{r}", trials=trials, sampler="random",
            pruner="none", device="cpu", **_stores(workdir / f"overhead-{r}"),
            # The trials paired are `params`: no recipe before them, their batch sizes kept.
            recipes="none", choices=[("batch_size", ",".join(
                sorted({str(p["batch_size"]) for p in params})))]))
        task = search.task()  # loaded (and cached in this process) outside both timings
        fine_tune(spec.space(_fixed(params[0]), Settings(epochs=1, seed=0)), task)  # warm
        for i, p in enumerate(params):
            search.study.enqueue_trial(p)
            config = spec.space(_fixed(p), search.settings)
            took = {}
            for step in ("bare", "tracked") if (i + r) % 2 == 0 else ("tracked", "bare"):
                started = time.perf_counter()
                if step == "bare":
                    fine_tune(config, task, device="cpu")
                else:
                    search.optimize(n_trials=1)
                took[step] = time.perf_counter() - started
            ratios.append(took["tracked"] / took["bare"] - 1)
            extra.append(took["tracked"] - took["bare"])
            bare_total += took["bare"]
            tracked_total += took["tracked"]
        started = time.perf_counter()
        search.tracker.flush()  # everything written, as a user would find it
        drain = time.perf_counter() - started
        tracked_total += drain
        search.close()
        assert search.finished == trials, "every benchmark trial must finish"
        print(f"  round {r + 1}: median pair overhead so far "
              f"{100 * statistics.median(ratios):+.2f}%, writer drained in {drain:.2f}s",
              flush=True)
    low, high = median_interval(ratios)
    extra_low, extra_high = median_interval(extra)
    return {
        "pairs": len(ratios),
        "extra_ms": 1000 * statistics.median(extra),
        "extra_low_ms": 1000 * extra_low,
        "extra_high_ms": 1000 * extra_high,
        "low_pct": 100 * low,
        "high_pct": 100 * high,
        "bare_s": bare_total,
        "tracked_s": tracked_total,
        "overhead_pct": 100 * statistics.median(ratios),
        "total_pct": 100 * (tracked_total / bare_total - 1),
        "mean_trial_s": bare_total / len(ratios),
    }


def quickstart(*, workdir: Path) -> dict[str, float]:
    folder = workdir / "quickstart"
    folder.mkdir()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "search.run", "--study", "digits"],
                            cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"quickstart failed ({result.returncode}): {result.stderr[-2000:]}")
    search = open_search(SearchOptions(
        study="digits", storage=str(folder / "mlruns" / "optuna.journal"),
        tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"))
    best = search.study.best_value
    search.close()
    return {"seconds": seconds, "best": best}


def workers(*, counts: tuple[int, ...] = (1, 2), trials: int = 24, rounds: int = 2,
            workdir: Path) -> dict[int, dict[str, float]]:
    """Trials per minute with each worker count: the same 20-epoch trials (enqueued), no pruner.

    Every worker gets the same threads, the share of the cores the most workers leave each
    (1 of 2 cores): the launcher gives its workers that share, and the command with fewer
    workers runs with OMP_NUM_THREADS set to it. Otherwise one worker would use every core and
    the comparison would measure the cores, not the workers. Two figures: over the whole command
    (process start-up included), and over the trials alone (first trial start to last trial
    end, from the storage).
    """
    from objectives.digits import load_digits_task

    threads = str(max(1, (os.cpu_count() or 1) // max(counts)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    folder = workdir / "workers"
    (folder / "mlruns").mkdir(parents=True)
    load_digits_task(cache_dir=folder / "mlruns" / "cache", seed=0)  # pretrained once, shared
    journal = str(folder / "mlruns" / "optuna.journal")
    params = _sample_params(trials, seed=2, epochs=20)
    figures: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            name = f"workers-{n}-{r}"
            # The same trials for every worker count: their cost varies with batch size.
            queued = optuna.create_study(study_name=name, storage=open_storage(journal),
                                         direction="maximize")
            for p in params:
                queued.enqueue_trial(p)
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "search.run", "--study", "digits", "--name", name,
                 "--workers", str(n), "--trials", str(trials), "--sampler", "random",
                 "--pruner", "none", "--race", "none"],  # the trials' throughput alone
                cwd=folder, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"workers {n} failed: {result.stderr[-2000:]}")
            study = optuna.load_study(study_name=name, storage=open_storage(journal))
            done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
            ends = [t.datetime_complete for t in done if t.datetime_complete is not None]
            starts = [t.datetime_start for t in done if t.datetime_start is not None]
            span = (max(ends) - min(starts)).total_seconds()
            figures[n].append((60 * len(done) / seconds, 60 * len(done) / span))
            print(f"  {n} worker(s), round {r}: {len(done)} trials in {seconds:.0f}s "
                  f"({figures[n][-1][0]:.1f}/min; trials alone {figures[n][-1][1]:.1f}/min)",
                  flush=True)
    return {n: {"per_minute": statistics.median(f[0] for f in v),
                "per_minute_trials": statistics.median(f[1] for f in v)}
            for n, v in figures.items()}


def build_parser() -> Parser:
    parser = Parser(prog="search.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this section (repeatable); default: all (gpu only "
                             "when a GPU is visible)")
    parser.add_argument("--trials", type=positive_int, default=12,
                        help="trials per overhead round")
    parser.add_argument("--rounds", type=positive_int, default=3, help="overhead rounds")
    parser.add_argument("--seeds", type=seed_list, default=None, metavar="N|S,S,...",
                        help="seeds of the pruning, quality and refit-rule comparisons: a "
                             "count N (seeds 0..N-1) or a list such as 0,1,2 (default: quality "
                             "and refit-rule 3; pruning 20 "
                             "on curves, 5 on digits)")
    parser.add_argument("--pruning-study", choices=("curves", "digits"), action="append",
                        help="pruning section: compare on this study only (repeatable; "
                             "default both)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="FOLDER",
                        help="real CIFAR-10 (FOLDER/train/<class>/*.jpg and test/, or "
                             "cifar-10-batches-py/) for the quality section (required there) "
                             "and the throughput section (default: random images)")
    parser.add_argument("--quality-trials", type=positive_int, default=None, metavar="N",
                        help="quality section: the search's budget (default: the study's)")
    parser.add_argument("--quality-epochs", type=positive_int, default=None, metavar="N",
                        help="quality section: epochs of every run (default: the study's)")
    refit = parser.add_argument_group("refit-rule section")
    refit.add_argument("--refit-study", choices=("digits", "cifar10-transfer"),
                       action="append", help="the study to simulate (repeatable; default: "
                       "digits, and cifar10-transfer with --data-dir)")
    refit.add_argument("--refit-sampled", type=positive_int, default=6, metavar="N",
                       help="configurations drawn from the space for the short search "
                            "(default 6)")
    refit.add_argument("--refit-keep", type=positive_int, default=2, metavar="K",
                       help="the short search's best, compared with the two recipes "
                            "(default 2)")
    from search.bench.scale import SETUPS, WORKERS

    scale = parser.add_argument_group("scale section")
    scale.add_argument("--scale-workers", type=count_list, default=WORKERS, metavar="N,N,...",
                       help=f"worker counts (default {','.join(map(str, WORKERS))})")
    scale.add_argument("--scale-setup", choices=tuple(SETUPS), action="append",
                       help="Optuna storage + MLflow store (repeatable; default: all)")
    group = parser.add_argument_group("gpu section")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where the gpu section's steps run (auto: CUDA when present)")
    group.add_argument("--size", choices=("auto", "full", "small", "tiny"), default="auto",
                       help="of the gpu section's steps (auto: full on CUDA, small on a CPU)")
    group.add_argument("--budget", type=positive_float, default=None, metavar="SECONDS",
                       help="time for all the gpu section's steps (default: the size's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = _check_options(args)
    except UsageError as e:
        print(f"search.bench: error: {e}", file=sys.stderr)
        return 2
    # With no --only, the gpu section runs on a GPU only: at its CPU size it would add about
    # 9 minutes to the other sections' 15.
    sections = args.only or [s for s in SECTIONS
                             if (s != "gpu" or device == "cuda") and s not in ON_REQUEST]
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        return _run_sections(sections, args, device, Path(tmp))


def _check_options(args: argparse.Namespace) -> str:
    """The device of the gpu and quality sections (pick_device's); options that do not go
    together, or a device that is not there, are a UsageError."""
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder: give the folder of "
                         "CIFAR-10 (JPEG folders or cifar-10-batches-py/), or leave it out for "
                         "the throughput section's random images")
    if "cifar10-transfer" in (args.refit_study or ()) and args.data_dir is None:
        raise UsageError("--refit-study cifar10-transfer needs --data-dir FOLDER, the folder "
                         "of CIFAR-10 (train/ and test/ JPEG folders, or cifar-10-batches-py/)")
    if "quality" in (args.only or ()) and args.data_dir is None:
        raise UsageError("--only quality needs --data-dir FOLDER, the folder of CIFAR-10 "
                         "(train/ and test/ JPEG folders, or cifar-10-batches-py/)")
    return pick_device(args.device)


def _run_sections(sections: list[str], args: argparse.Namespace, device: str,
                  workdir: Path) -> int:
    """Each chosen section in turn, in this order; the exit status (the gpu section's, or 2
    when the quality section's data cannot be read)."""
    status = 0
    if "overhead" in sections:
        _overhead_section(trials=args.trials, rounds=args.rounds, workdir=workdir)
    if "pruning" in sections:
        _pruning_section(studies=args.pruning_study, seeds=args.seeds)
    if "quickstart" in sections:
        _quickstart_section(workdir=workdir)
    if "throughput" in sections:
        _throughput_section(data_dir=args.data_dir)
    if "workers" in sections:
        _workers_section(workdir=workdir)
    if "scale" in sections:
        _scale_section(counts=args.scale_workers, setups=args.scale_setup, workdir=workdir)
    if "gpu" in sections:
        from search.bench.gpu import run_gpu

        size = args.size if args.size != "auto" else "full" if device == "cuda" else "small"
        status = run_gpu(device=device, size=size, budget=args.budget, workdir=workdir / "gpu")
    if "quality" in sections and not _quality_section(args, device):
        return 2
    if "refit-rule" in sections:
        from search.bench.refit_rule import run as refit_rules

        studies = args.refit_study or ["digits"] + ["cifar10-transfer"] * bool(args.data_dir)
        print(f"refit-rule: {', '.join(studies)}, refit rules compared on held-out parts of "
              "train + validation", flush=True)
        try:
            refit_rules(studies, seeds=args.seeds or [0, 1, 2], sampled=args.refit_sampled,
                        keep=args.refit_keep, data_dir=args.data_dir, device=device)
        except InputError as e:
            print(f"search.bench: error: {e}", file=sys.stderr)
            return 2
    return status


def _overhead_section(*, trials: int, rounds: int, workdir: Path) -> None:
    print(f"overhead: {trials} digits trials x {rounds} rounds", flush=True)
    o = overhead(trials=trials, rounds=rounds, workdir=workdir)
    print(f"overhead: {o['overhead_pct']:+.2f}% of trial time (median of {o['pairs']} "
          f"pairs, 95% interval {o['low_pct']:+.2f}% to {o['high_pct']:+.2f}%; trials "
          f"of {o['mean_trial_s']:.2f}s); totals: bare {o['bare_s']:.1f}s, "
          f"tracked {o['tracked_s']:.1f}s ({o['total_pct']:+.2f}%)  [target <= 2%]")
    print(f"overhead: {o['extra_ms']:+.0f} ms a trial (median of the pairs' differences, "
          f"95% interval {o['extra_low_ms']:+.0f} to {o['extra_high_ms']:+.0f} ms)")


def _pruning_section(*, studies: list[str] | None, seeds: list[int] | None) -> None:
    """`studies` (default: all) with `seeds` (default: each study's count)."""
    from search.bench.pruning import STUDIES, compare, write

    results = []
    for study, default_seeds in STUDIES.items():
        if studies and study not in studies:
            continue
        chosen = seeds or list(range(default_seeds))
        print(f"pruning: {study}, pruners at the epoch budget of the unpruned search, "
              f"seeds {_seeds_text(chosen)}", flush=True)
        results.append(compare(study, seeds=chosen))
    print("\n".join(write(results)))


def _quickstart_section(*, workdir: Path) -> None:
    print("quickstart: python -m search.run --study digits, fresh folder", flush=True)
    q = quickstart(workdir=workdir)
    print(f"quickstart: {q['seconds']:.0f}s, best val_accuracy {q['best']:.4f}  "
          "[target <= 180s, >= 0.97]")


def _throughput_section(*, data_dir: Path | None) -> None:
    from search.bench.throughput import Throughput, measure

    print("throughput: resnet18 at 32x32, batch 256, ours vs DataLoader + PIL", flush=True)
    t = measure(Throughput(device="auto", data=data_dir))
    print(f"throughput ({t['device']}): ours {t['ours_images_per_s']:.0f} images/s, "
          f"baseline {t['baseline_images_per_s']:.0f} images/s ({t['workers']} "
          f"workers), ratio {t['ratio']:.2f}x  [GPU targets: >= 5x, >= 25,000 "
          "images/s with bf16]")


def _workers_section(*, workdir: Path) -> None:
    print("workers: digits, the same 24 trials of 20 epochs, 1 and 2 worker processes "
          "of equal threads", flush=True)
    w = workers(workdir=workdir)
    one, two = w[1], w[2]
    print(f"workers: 1 worker {one['per_minute']:.1f} trials/min "
          f"({one['per_minute_trials']:.1f} over the trials alone), 2 workers "
          f"{two['per_minute']:.1f} ({two['per_minute_trials']:.1f}); speed-up "
          f"{two['per_minute'] / one['per_minute']:.2f}x "
          f"({two['per_minute_trials'] / one['per_minute_trials']:.2f}x)  "
          "[target >= 1.8x]")


def _scale_section(*, counts: tuple[int, ...], setups: list[str] | None,
                   workdir: Path) -> None:
    """`counts` workers on each of `setups` (default: all)."""
    from search.bench.scale import SETUPS, run_all
    from search.bench.scale import write as write_scale

    print("scale: the curves study (no compute), worker counts "
          f"{','.join(map(str, counts))}", flush=True)
    found = run_all(workers=counts, workdir=workdir / "scale", setups=tuple(setups or SETUPS))
    print(f"scale: table in {write_scale(found)}  [target at 64 workers on postgresql "
          "+ server: 0 errors, budget exact, <= 100 ms per trial, <= 10 ms per report]")


def _quality_section(args: argparse.Namespace, device: str) -> bool:
    """The quality comparison and its report; False (after one line) when the data cannot be
    read."""
    from search.bench.quality import quality, report

    seeds = args.seeds or [0, 1, 2]
    print(f"quality: cifar10-transfer, seeds {','.join(map(str, seeds))}: recipes, "
          "default search and refit", flush=True)
    try:
        result = quality(data_dir=args.data_dir, seeds=seeds, device=device,
                         trials=args.quality_trials, epochs=args.quality_epochs)
    except InputError as e:
        print(f"search.bench: error: {e}", file=sys.stderr)
        return False
    report(result)
    return True


def _seeds_text(seeds: list[int]) -> str:
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive and len(seeds) > 2 else ",".join(map(str,
                                                                                        seeds))


def seed_list(text: str) -> list[int]:
    """--seeds: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a count such as 3 or a list such as 0,1,2, "
                                         f"got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"lists a seed twice: {text!r}")
    return seeds




def count_list(text: str) -> tuple[int, ...]:
    """--scale-workers: comma-separated positive counts."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"must be positive counts such as 1,8,32, got {text!r}")
    return counts
