"""`python -m search.bench --only scale`: coordination under many workers, with no compute.

Each configuration is one `python -m search.run --study curves --workers N` (the launcher and
its forked CPU workers, the real stack) on an Optuna storage and an MLflow tracking store, in
a fresh folder. The curves study trains nothing: every epoch takes its simulated time times
--time-scale (its evaluation included), so what a trial takes beyond that is coordination:
sampling and claiming the trial, its MLflow run, every epoch's report, pruning decision and
logged metrics, its artifacts. Read back from Optuna's record and MLflow:

- trials/s: finished trials per second between the first start and the last finish;
- per trial, per report: each finished trial's wall time minus its simulated time, fitted
  as a + b * epochs over the trials (least squares): a is the cost of one trial, b of one
  epoch's report. Each worker's first trial is left out of the fit and shown on its own
  ("first trial"): it also pays for starting the worker's MLflow writer;
- errors: failed trials other than the simulation's own divergences, and error lines in the
  worker and writer logs; exact: the study finished exactly its budget; running: trials or
  MLflow runs left RUNNING (must be 0);
- cpu: how busy this machine's cores were, and the CPU seconds (all processes: workers,
  writers, launcher, servers) per finished trial. All workers share the cores here: where
  they are near 100%, the costs above are waiting for a core, not for the storage; the CPU
  seconds per trial are what a trial's coordination costs in compute wherever it runs;
- over budget: trials that lost the race for the budget's last places (ended at once,
  see search.study.optuna_study.over_budget); locked: writes MLflow retried on a locked
  SQLite file.

Servers (PostgreSQL, Redis, an MLflow server on PostgreSQL) are started on loopback ports by
search.bench.servers (the ones the tests start too); a setup whose server is not installed is
skipped with its reason. A worker count that would not fit in this machine's available memory
is skipped and says what it needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.core import names

OUT = Path("mlruns/bench")
WORKERS = (1, 8, 32, 64)
# name: (Optuna storage, MLflow tracking store)
SETUPS = {
    "journal + sqlite": ("journal", "sqlite"),
    "postgresql + sqlite": ("postgresql", "sqlite"),
    "redis + server": ("redis", "server"),
    "postgresql + server": ("postgresql", "server"),
}
TIME_SCALE = 0.02  # a simulated epoch (20-30 s) takes 0.4-0.6 s
TRIALS_PER_WORKER = 4
WORKER_MB = 150  # private memory of a forked curves worker and its writer: 85 MB measured
BASE_MB = 1500  # the launcher, the forkserver, the servers
LIMIT_S = 240.0  # one configuration's wall-clock bound
# PostgreSQL's default, 100, refused workers beyond about 45 (each holds two connections: its
# trials' and its heartbeat thread's).
MAX_CONNECTIONS = 300


@dataclass
class Result:
    setup: str
    workers: int
    budget: int
    skipped: str | None = None
    seconds: float = 0.0
    finished: int = 0
    errors: list[str] = field(default_factory=list)
    running: int = 0
    trials_per_second: float = 0.0
    per_trial_ms: float = float("nan")
    per_report_ms: float = float("nan")
    first_trial_ms: float = float("nan")  # a worker's first trial's cost (its start-up)
    cpu_per_trial: float = float("nan")  # CPU seconds of the whole machine per finished trial
    over_budget: int = 0  # trials that lost the race for the budget's last places
    locked: int = 0  # writes MLflow retried on a locked SQLite file
    cpu: float = float("nan")

    @property
    def exact(self) -> bool:
        return self.finished == self.budget


def run_all(*, workers: tuple[int, ...] = WORKERS, setups: tuple[str, ...] = tuple(SETUPS),
            workdir: Path, time_scale: float = TIME_SCALE,
            trials_per_worker: int = TRIALS_PER_WORKER,
            log: Callable[[str], None] = print) -> list[Result]:
    """Every setup at every worker count; servers started once per setup and shared by its
    worker counts (each count is its own study)."""
    results = []
    budget = {count: max(4, trials_per_worker * count) for count in workers}
    for setup in setups:
        storage_kind, tracking_kind = SETUPS[setup]
        try:
            with _stores(storage_kind, tracking_kind, workdir / "servers") as stores:
                for count in workers:
                    result = run_one(setup, count, stores, workdir=workdir,
                                     time_scale=time_scale,
                                     budget=budget[count])
                    log(line(result))
                    results.append(result)
        except _Unavailable as e:
            for count in workers:
                result = Result(setup, count, budget[count], skipped=str(e))
                log(line(result))
                results.append(result)
    return results


class _Unavailable(Exception):
    pass


@dataclass
class Stores:
    """Server URLs shared by a setup's configurations; None: a file in each one's folder
    (the journal file, a SQLite tracking store)."""

    storage: str | None = None
    tracking: str | None = None

    def urls(self, folder: Path) -> tuple[str, str]:
        return (self.storage or str(folder / "optuna.journal"),
                self.tracking or f"sqlite:///{folder / 'mlflow.db'}")


@contextlib.contextmanager
def _stores(storage_kind: str, tracking_kind: str, folder: Path) -> Iterator[Stores]:
    try:
        from search.bench import servers
    except ImportError:
        raise _Unavailable("needs the test suite's server helpers: run from the repository "
                           "root") from None
    stores = Stores()
    with contextlib.ExitStack() as stack:
        pg = None
        if "postgresql" in (storage_kind, tracking_kind) or tracking_kind == "server":
            reason = servers.postgres_available()
            if reason is not None:
                raise _Unavailable(reason)
            pg = stack.enter_context(servers.postgres_server(folder,
                                                             max_connections=MAX_CONNECTIONS))
        if storage_kind == "postgresql":
            assert pg is not None
            stores.storage = pg.url
        elif storage_kind == "redis":
            reason = servers.redis_available()
            if reason is not None:
                raise _Unavailable(reason)
            stores.storage = stack.enter_context(servers.redis_server(folder)).url
        if tracking_kind == "server":  # on PostgreSQL: a SQLite server would be the bottleneck
            assert pg is not None
            stores.tracking = stack.enter_context(servers.mlflow_server(
                folder, backend_store_uri=_database(pg, "mlflow"))).url
        yield stores


def _database(pg: Any, name: str) -> str:
    """A second database on the server (MLflow's tables must not meet Optuna's)."""
    from psycopg import sql

    with pg.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER searcher").format(sql.Identifier(name)))
    return str(pg.url).rsplit("/", 1)[0] + f"/{name}"


def run_one(setup: str, workers: int, stores: Stores, *, workdir: Path, time_scale: float,
            budget: int) -> Result:
    result = Result(setup, workers, budget)
    needed = BASE_MB + WORKER_MB * workers
    available = _available_mb()
    if available is not None and needed > available:
        result.skipped = (f"needs about {needed / 1024:.1f} GiB, {available / 1024:.1f} GiB "
                          "available")
        return result
    name = f"scale-{re.sub(r'[^a-z]+', '-', setup)}-{workers}"
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    storage, tracking = stores.urls(folder)
    command = [sys.executable, "-m", "search.run", "--study", "curves", "--name", name,
               "--storage", storage, "--tracking-uri", tracking, "--workers", str(workers),
               "--trials", str(budget), "--time-scale", str(time_scale), "--seed", "0",
               # coordination of the trials alone, comparable with the figures before them
               "--recipes", "none", "--race", "none"]
    busy = _cpu_ticks()
    started = time.perf_counter()
    with open(folder / "launcher.log", "w+") as log:
        launcher = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                    start_new_session=True)
        try:
            code: int | None = launcher.wait(LIMIT_S)
        except subprocess.TimeoutExpired:
            # As a user's Ctrl-C: the launcher stops its workers, which interrupt their trials;
            # then whatever is left of the session goes (a killed launcher alone would leave
            # its workers running into the next configuration).
            code = None
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(90)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        log.seek(0)
        output = log.read()
    result.seconds = time.perf_counter() - started
    result.cpu = _cpu_share(busy)
    result.errors += [f"launcher: {entry[:200]}" for entry in output.splitlines()
                      if entry.startswith("warning:")]
    if code != 0:
        last = output.strip().splitlines()[-1:] or [""]
        result.errors.append(f"search.run exited {code}: {last[0][:200]}"
                             if code is not None else f"over {LIMIT_S:.0f} s")
    _read_back(result, storage, tracking, name, folder, time_scale)
    return result


def _read_back(result: Result, storage: str, tracking: str, name: str, folder: Path,
               time_scale: float) -> None:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import FixedTrial, TrialState

    import spaces
    from objectives.curves import curve
    from search.core.names import OVER_BUDGET
    from search.storage.optuna_storage import open_storage
    from spaces import Settings

    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    cores = os.cpu_count() or 1
    spec = spaces.get_study("curves")
    settings = Settings(epochs=spec.epochs, seed=0, resolution=spec.resolution)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    result.finished = len(finished)
    if finished:
        result.cpu_per_trial = result.cpu * cores * result.seconds / len(finished)
    for t in trials:
        reason = str(t.user_attrs.get(names.FAIL_REASON, ""))
        if t.state == TrialState.FAIL:
            if reason.startswith("diverged"):
                continue  # the simulation's own divergences: not errors
            if reason == OVER_BUDGET:
                result.over_budget += 1
            else:
                result.errors.append(f"trial {t.number} failed: {reason}")
    result.running = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], max_results=50_000)
        result.running += sum(r.info.status == "RUNNING" for r in runs)
    # Errors: what a worker reports (a failed write, after the writer's retries, is a
    # warning). A writer's log also holds what MLflow itself logs of a write it retries, such
    # as SQLite's "database is locked": counted apart, as contention.
    for path in sorted((folder / "mlruns").rglob("*.log")):
        text = path.read_text(errors="replace")
        if path.name.startswith("writer-"):
            result.locked += text.count("sqlite3.OperationalError) database is locked")
            continue
        for entry in text.splitlines():
            if entry.startswith(("search.run: error", "warning:", "Traceback")):
                result.errors.append(f"{path.name}: {entry[:200]}")
    spans = [(t, t.datetime_start, t.datetime_complete) for t in finished
             if t.datetime_start is not None and t.datetime_complete is not None]
    if len(spans) < 2:
        return
    first, last = min(s for _, s, _ in spans), max(c for _, _, c in spans)
    result.trials_per_second = len(spans) / max(1e-9, (last - first).total_seconds())
    firsts: dict[str, int] = {}  # worker -> its first trial (it also waits for the writer)
    for t, _, _ in sorted(spans, key=lambda span: span[1]):
        firsts.setdefault(str(t.user_attrs.get(names.WORKER)), t.number)
    epochs: list[int] = []
    overheads: list[float] = []
    starting: list[float] = []
    for t, start, complete in spans:
        config = spec.space(FixedTrial(t.params), settings)  # type: ignore[arg-type]
        count = len(t.intermediate_values)
        overhead = ((complete - start).total_seconds()
                    - count * curve(config).epoch_seconds * time_scale)
        if t.number in firsts.values():
            starting.append(overhead)
        else:
            epochs.append(count)
            overheads.append(overhead)
    if starting:
        result.first_trial_ms = 1000 * statistics.median(starting)
    if len(set(epochs)) > 1:
        slope, intercept = np.polyfit(epochs, overheads, 1)
        result.per_trial_ms, result.per_report_ms = 1000 * intercept, 1000 * slope
    elif overheads:
        result.per_trial_ms = 1000 * statistics.median(overheads)


def _available_mb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"MemAvailable:\s+(\d+) kB", text)
    return int(found.group(1)) / 1024 if found else None


def _cpu_ticks() -> tuple[int, int] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _cpu_share(before: tuple[int, int] | None) -> float:
    after = _cpu_ticks()
    if before is None or after is None or after[1] == before[1]:
        return float("nan")
    return (after[0] - before[0]) / (after[1] - before[1])


def line(r: Result) -> str:
    if r.skipped:
        return f"scale: {r.setup}, {r.workers} workers: skipped ({r.skipped})"
    return (f"scale: {r.setup}, {r.workers} workers: {r.finished}/{r.budget} finished"
            f"{' (exact)' if r.exact else ''}, {len(r.errors)} errors, {r.running} running, "
            f"{r.over_budget} over budget, {r.locked} locked, "
            f"{r.trials_per_second:.2f} trials/s, {r.per_trial_ms:.0f} ms per trial, "
            f"{r.per_report_ms:.1f} ms per report, first trial {r.first_trial_ms:.0f} ms, "
            f"{r.cpu_per_trial:.2f} cpu s per trial, cpu {100 * r.cpu:.0f}%, {r.seconds:.0f} s")


COLUMNS = ("setup", "workers", "finished / budget", "errors", "left running", "over budget",
           "locked retries", "trials/s", "ms per trial", "ms per report", "first trial ms",
           "CPU s per trial", "cpu busy", "wall s")


def table(results: list[Result]) -> list[str]:
    rows = ["| " + " | ".join(COLUMNS) + " |",
            "| --- | ---: | --- |" + " ---: |" * (len(COLUMNS) - 3)]
    for r in results:
        if r.skipped:
            rows.append(f"| {r.setup} | {r.workers} | skipped: {r.skipped} |"
                        + " |" * (len(COLUMNS) - 3))
            continue
        cells = [r.setup, str(r.workers),
                 f"{r.finished} / {r.budget}{'' if r.exact else ' (not exact)'}",
                 str(len(r.errors)), str(r.running), str(r.over_budget), str(r.locked),
                 f"{r.trials_per_second:.2f}", f"{r.per_trial_ms:.0f}",
                 f"{r.per_report_ms:.1f}", f"{r.first_trial_ms:.0f}",
                 f"{r.cpu_per_trial:.2f}", f"{100 * r.cpu:.0f}%", f"{r.seconds:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def write(results: list[Result], *, out: Path = OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.md"
    errors = [f"- {r.setup}, {r.workers} workers: {e}" for r in results for e in r.errors[:5]]
    text = ["# Coordination at scale (python -m search.bench --only scale)", "",
            f"curves study, --time-scale {TIME_SCALE}, {TRIALS_PER_WORKER} trials per worker; "
            "cost = wall time minus simulated time, fitted as per trial + per report x "
            "epochs.", "", *table(results), ""]
    if errors:
        text += ["Errors (first five per configuration):", "", *errors, ""]
    path.write_text("\n".join(text))
    return path
