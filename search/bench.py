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
from typing import Any, cast

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


def _fixed(params: dict[str, Any]) -> optuna.Trial:
    """A FixedTrial, which spaces accept like a Trial (they only call suggest_*)."""
    return cast(optuna.Trial, optuna.trial.FixedTrial(params))


def _stores(folder: Path) -> dict[str, Any]:
    return {"storage": str(folder / "optuna.journal"),
            "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}


def overhead(*, trials: int, rounds: int, workdir: Path) -> dict[str, float]:
    """Bare and tracked runs of the same trials, interleaved trial by trial.

    Each trial runs bare and through the search back to back (alternating which goes first);
    the overhead is the median over all pairs of tracked/bare - 1, which resists the minutes-long
    swings of a shared machine better than a ratio of totals.
    """
    spec = spaces.get_study("digits")
    params = _sample_params(trials, seed=1, epochs=spec.epochs)
    ratios, bare_total, tracked_total = [], 0.0, 0.0
    for r in range(rounds):
        search = open_search(study="digits", name=f"overhead-{r}", trials=trials,
                             sampler="random", pruner="none", device="cpu",
                             **_stores(workdir / f"overhead-{r}"))
        task = search.task()  # loaded (and cached in this process) outside both timings
        fine_tune(spec.space(_fixed(params[0]), epochs=1, seed=0), task)  # warm
        for i, p in enumerate(params):
            search.study.enqueue_trial(p)
            config = spec.space(_fixed(p), epochs=search.epochs,
                                seed=search.seed)
            took = {}
            for step in ("bare", "tracked") if (i + r) % 2 == 0 else ("tracked", "bare"):
                started = time.perf_counter()
                if step == "bare":
                    fine_tune(config, task, device="cpu")
                else:
                    search.optimize(n_trials=1)
                took[step] = time.perf_counter() - started
            ratios.append(took["tracked"] / took["bare"] - 1)
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
    return {
        "pairs": len(ratios),
        "bare_s": bare_total,
        "tracked_s": tracked_total,
        "overhead_pct": 100 * statistics.median(ratios),
        "total_pct": 100 * (tracked_total / bare_total - 1),
        "mean_trial_s": bare_total / len(ratios),
    }


def pruning(*, trials: int, seeds: list[int], workdir: Path) -> dict[str, dict[str, float]]:
    """The default pruner against none, same budget, for each seed; medians over the seeds."""
    runs: dict[str, list[dict[str, float]]] = {"hyperband": [], "none": []}
    for seed in seeds:
        for pruner in runs:
            name = f"pruning-{pruner}-{seed}"
            search = open_search(study="digits", name=name, trials=trials, pruner=pruner,
                                 seed=seed, device="cpu", **_stores(workdir / name))
            search.task()
            started = time.perf_counter()
            search.optimize()
            seconds = time.perf_counter() - started
            search.close()
            finished = search.study.get_trials(deepcopy=False, states=FINISHED)
            figures = {
                "epochs": sum(len(t.intermediate_values) for t in finished),
                "best": search.study.best_value,
                "pruned": sum(t.state.name == "PRUNED" for t in finished),
                "seconds": seconds,
            }
            runs[pruner].append(figures)
            print(f"  seed {seed}, {pruner}: best {figures['best']:.4f}, "
                  f"{figures['epochs']:.0f} epochs, {figures['pruned']:.0f} pruned, "
                  f"{seconds:.0f}s", flush=True)
    pairs = list(zip(runs["hyperband"], runs["none"], strict=True))
    return {
        pruner: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for pruner, results in runs.items()
    } | {"paired": {
        "points": statistics.median(100 * (h["best"] - n["best"]) for h, n in pairs),
        "epoch_ratio": statistics.median(h["epochs"] / n["epochs"] for h, n in pairs),
    }}


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
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the pruning comparison")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        workdir = Path(tmp)
        if "overhead" in sections:
            print(f"overhead: {args.trials} digits trials x {args.rounds} rounds", flush=True)
            o = overhead(trials=args.trials, rounds=args.rounds, workdir=workdir)
            print(f"overhead: {o['overhead_pct']:+.2f}% of trial time (median of {o['pairs']} "
                  f"pairs; trials of {o['mean_trial_s']:.2f}s); totals: bare {o['bare_s']:.1f}s, "
                  f"tracked {o['tracked_s']:.1f}s ({o['total_pct']:+.2f}%)  [target <= 2%]")
        if "pruning" in sections:
            budget = spaces.get_study("digits").trials
            print(f"pruning: digits, {budget} trials, hyperband vs none, seeds "
                  f"0..{args.seeds - 1}", flush=True)
            p = pruning(trials=budget, seeds=list(range(args.seeds)), workdir=workdir)
            h, n, d = p["hyperband"], p["none"], p["paired"]
            print(f"pruning (medians over seeds): hyperband best {h['best']:.4f} in "
                  f"{h['epochs']:.0f} epochs ({h['seconds']:.0f}s); none best {n['best']:.4f} "
                  f"in {n['epochs']:.0f} epochs ({n['seconds']:.0f}s); paired: "
                  f"{d['points']:+.2f} points with {d['epoch_ratio']:.2f}x the epochs  "
                  "[target >= -0.5 points, <= 0.33x]")
        if "quickstart" in sections:
            print("quickstart: python -m search.run --study digits, fresh folder", flush=True)
            q = quickstart(workdir=workdir)
            print(f"quickstart: {q['seconds']:.0f}s, best val_accuracy {q['best']:.4f}  "
                  "[target <= 180s, >= 0.97]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
