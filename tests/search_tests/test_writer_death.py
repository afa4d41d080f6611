"""A search whose MLflow writer is killed, as an operator would see it: `kill -9` of the writer
process in the middle of `python -m search.run`."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.sync import main as sync_main
from tests.search_tests.conftest import client, load_study, runs

pytestmark = pytest.mark.slow  # real searches, processes or servers

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _start(workdir: Path, trials: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "search.run", "--study", "digits", "--epochs", "2",
         "--trials", str(trials), "--pruner", "none"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def _writers(pid: int) -> list[int]:
    """The search process's writer processes (multiprocessing's spawned children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def _run_count(workdir: Path) -> int:
    try:
        with sqlite3.connect(workdir / "mlruns" / "mlflow.db", timeout=30) as db:
            return int(db.execute("select count(*) from runs").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def _kill_writer_at_work(search: subprocess.Popen[str], workdir: Path, *,
                         killed: set[int]) -> None:
    """Kill -9 the search's (new) writer once it has written three more runs."""
    deadline = time.monotonic() + 300
    while not (writers := [w for w in _writers(search.pid) if w not in killed]):
        assert search.poll() is None and time.monotonic() < deadline, "no writer to kill"
        time.sleep(0.1)
    start = _run_count(workdir)
    while _run_count(workdir) < start + 3:
        assert search.poll() is None and time.monotonic() < deadline, "the search ended first"
        time.sleep(0.1)
    for pid in writers:
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)


def _one_ended_run_per_finished_trial(workdir: Path) -> None:
    study = load_study(workdir)
    finished = [t for t in study.trials if t.state in FINISHED]
    parents, trials = runs(workdir)
    assert len(parents) == 1
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in trials)
    assert numbers == sorted(t.number for t in finished)  # one each, none twice
    assert not [r for r in trials if r.info.status == "RUNNING"]
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in trials}
    mlflow = client(workdir)
    for trial in finished:
        run = by_number[trial.number]
        assert run.data.tags["optuna.state"] == trial.state.name
        history = mlflow.get_metric_history(run.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == trial.intermediate_values


def test_a_writer_killed_mid_search_is_replaced_and_every_trial_is_tracked(
        workdir: Path) -> None:
    search = _start(workdir, 24)
    _kill_writer_at_work(search, workdir, killed=set())
    out, err = search.communicate(timeout=600)
    ended = time.time()

    assert search.returncode == 0, err
    assert "a new writer took over" in out
    assert "Traceback" not in err
    study = load_study(workdir)
    assert len([t for t in study.trials if t.state in FINISHED]) == 24
    _one_ended_run_per_finished_trial(workdir)
    # What was not confirmed was written again, artifacts included (none rebuilt blind).
    _, trials = runs(workdir)
    assert not [r for r in trials if r.data.tags.get("search.backfilled")]
    last = max(t.datetime_complete for t in study.trials if t.datetime_complete)
    assert ended - last.timestamp() < 30  # it exits within seconds of its last trial


def test_a_writer_killed_twice_stops_the_search_with_one_line(
        workdir: Path, capsys: object) -> None:
    search = _start(workdir, 200)
    killed: set[int] = set()
    _kill_writer_at_work(search, workdir, killed=killed)
    _kill_writer_at_work(search, workdir, killed=killed)
    out, err = search.communicate(timeout=600)

    assert search.returncode == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("search.run: error: the MLflow writer died again")
    assert "python -m search.sync --study digits" in lines[0]
    study = load_study(workdir)
    assert len([t for t in study.trials if t.state in FINISHED]) < 200  # it stopped
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    # The search itself rebuilt what its writer could not write; search.sync finds it whole.
    _one_ended_run_per_finished_trial(workdir)
    assert sync_main(["--study", "digits"]) == 0
    _one_ended_run_per_finished_trial(workdir)
