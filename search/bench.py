"""`python -m search.bench`: the figures the README quotes, measured in one run on this machine.

1. overhead: the same trials as bare `fine_tune` loops and through the search (Optuna storage,
   MLflow tracking, artifacts); the overhead is the extra wall time as a share of trial time.
2. pruning: the study with the default pruner and with none, same seeds and budget: epochs
   trained and best validation accuracy.
3. quickstart: `python -m search.run --study digits` in a fresh folder (pretraining included).

Rounds alternate bare and tracked runs so that a noisy neighbour hurts both; medians are quoted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

import spaces
from objectives.train import fine_tune
from search.session import open_search, quiet_libraries
from search.study import FINISHED

SECTIONS = ("overhead", "pruning", "quickstart")


def _sample_params(count: int, *, seed: int, epochs: int) -> list[dict[str, Any]]:
    """`count` parameter sets drawn from the digits space (random sampler, seeded)."""
    spec = spaces.get_study("digits")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(count):
        trial = study.ask()
        spec.space(trial, epochs=epochs, seed=spec.seed)
        drawn.append(dict(trial.params))
        study.tell(trial, 0.0)
    return drawn


def _stores(folder: Path) -> dict[str, str]:
    return {"storage": str(folder / "optuna.journal"),
            "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}


def overhead(*, trials: int, rounds: int, workdir: Path) -> dict[str, float]:
    """Bare and tracked runs of the same trials, interleaved trial by trial against drift."""
    spec = spaces.get_study("digits")
    params = _sample_params(trials, seed=1, epochs=spec.epochs)
    bare_times, tracked_times = [], []
    for r in range(rounds):
        search = open_search(study="digits", name=f"overhead-{r}", trials=trials,
                             sampler="random", pruner="none", device="cpu",
                             **_stores(workdir / f"overhead-{r}"))
        task = search.task()  # loaded (and cached in this process) outside both timings
        bare = tracked = 0.0
        for i, p in enumerate(params):
            search.study.enqueue_trial(p)
            config = spec.space(optuna.trial.FixedTrial(p), epochs=search.epochs,
                                seed=search.seed)
            for step in ("bare", "tracked") if (i + r) % 2 == 0 else ("tracked", "bare"):
                started = time.perf_counter()
                if step == "bare":
                    fine_tune(config, task, device="cpu")
                    bare += time.perf_counter() - started
                else:
                    search.optimize(n_trials=1)
                    tracked += time.perf_counter() - started
        started = time.perf_counter()
        search.tracker.flush()  # everything written, as a user would find it
        tracked += time.perf_counter() - started
        search.close()
        assert search.finished == trials, "every benchmark trial must finish"
        bare_times.append(bare)
        tracked_times.append(tracked)
        print(f"  round {r + 1}: bare {bare:.2f}s, tracked {tracked:.2f}s, "
              f"overhead {100 * (tracked / bare - 1):+.2f}%", flush=True)
    ratios = [t / b - 1 for t, b in zip(tracked_times, bare_times, strict=True)]
    return {
        "trials": trials,
        "bare_s": statistics.median(bare_times),
        "tracked_s": statistics.median(tracked_times),
        "overhead_pct": 100 * statistics.median(ratios),
        "per_trial_ms": 1000 * statistics.median(
            (t - b) / trials for t, b in zip(tracked_times, bare_times, strict=True)),
    }


def pruning(*, trials: int, workdir: Path) -> dict[str, dict[str, float]]:
    figures = {}
    for pruner in ("hyperband", "none"):
        search = open_search(study="digits", name=f"pruning-{pruner}", trials=trials,
                             pruner=pruner, device="cpu", **_stores(workdir / f"pruning-{pruner}"))
        search.task()
        started = time.perf_counter()
        search.optimize()
        seconds = time.perf_counter() - started
        search.close()
        finished = search.study.get_trials(deepcopy=False, states=FINISHED)
        figures[pruner] = {
            "epochs": sum(len(t.intermediate_values) for t in finished),
            "best": search.study.best_value,
            "pruned": sum(t.state.name == "PRUNED" for t in finished),
            "seconds": seconds,
        }
        print(f"  {pruner}: {figures[pruner]}", flush=True)
    return figures


def quickstart(*, workdir: Path) -> dict[str, float]:
    folder = workdir / "quickstart"
    folder.mkdir()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "search.run", "--study", "digits"],
                            cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"quickstart failed ({result.returncode}): {result.stderr[-2000:]}")
    search = open_search(study="digits", storage=str(folder / "mlruns" / "optuna.journal"),
                         tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    best = search.study.best_value
    search.close()
    return {"seconds": seconds, "best": best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="search.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this section (repeatable); default: all")
    parser.add_argument("--trials", type=int, default=12, help="trials per overhead round")
    parser.add_argument("--rounds", type=int, default=3, help="overhead rounds")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        workdir = Path(tmp)
        if "overhead" in sections:
            print(f"overhead: {args.trials} digits trials x {args.rounds} rounds", flush=True)
            o = overhead(trials=args.trials, rounds=args.rounds, workdir=workdir)
            print(f"overhead: bare {o['bare_s']:.2f}s, tracked {o['tracked_s']:.2f}s for "
                  f"{o['trials']} trials (medians) -> {o['overhead_pct']:+.2f}% of trial time, "
                  f"{o['per_trial_ms']:.0f} ms per trial  [target <= 2%]")
        if "pruning" in sections:
            budget = spaces.get_study("digits").trials
            print(f"pruning: digits, {budget} trials, hyperband vs none", flush=True)
            p = pruning(trials=budget, workdir=workdir)
            h, n = p["hyperband"], p["none"]
            print(f"pruning: hyperband best {h['best']:.4f} in {h['epochs']:.0f} epochs "
                  f"({h['seconds']:.0f}s); none best {n['best']:.4f} in {n['epochs']:.0f} epochs "
                  f"({n['seconds']:.0f}s) -> {100 * (h['best'] - n['best']):+.2f} points with "
                  f"{h['epochs'] / n['epochs']:.2f}x the epochs  "
                  "[target >= -0.5 points, <= 0.33x]")
        if "quickstart" in sections:
            print("quickstart: python -m search.run --study digits, fresh folder", flush=True)
            q = quickstart(workdir=workdir)
            print(f"quickstart: {q['seconds']:.0f}s, best val_accuracy {q['best']:.4f}  "
                  "[target <= 180s, >= 0.97]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
