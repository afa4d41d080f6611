"""CPU workers forked warm (search.execution.forked) behave as a started `python -m search.run`
does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from search import run as search_run
from search.execution.forked import ForkedProcess, stop_forkserver
from search.execution.launch import Worker, plan_workers


@contextlib.contextmanager
def forkserver() -> Iterator[None]:
    """Stopped within the test (as the launcher stops it once its workers are done): the
    suite stops, and warns of, what a test body leaves running."""
    try:
        yield
    finally:
        stop_forkserver()


def test_a_forked_worker_has_search_runs_status_output_and_environment(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    env = {**os.environ, **plan_workers(workers=2, gpus=None, trials_per_gpu=1)[0]}
    with forkserver():
        worker = ForkedProcess(search_run.main, ["--study", "no-such-study"], env, log)
        assert worker.wait(120) == 2  # bad input, as search.run exits on it
    assert worker.poll() == 2 and worker.returncode == 2
    lines = log.read_text().splitlines()
    assert any(line.startswith("search.run: error:") and "no-such-study" in line
               for line in lines), lines
    assert "Traceback" not in log.read_text()


def test_a_killed_forked_worker_reads_as_a_killed_process(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    # A SIGKILL at any point of the worker's life reads as -9, as Popen's returncode does.
    with forkserver():
        worker = ForkedProcess(search_run.main,
                               ["--study", "curves", "--trials", "1000", "--time-scale", "1",
                                "--storage", str(tmp_path / "optuna.journal"),
                                "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                               {**os.environ}, log)
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(0.5)
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(60) == -signal.SIGKILL


def test_the_launcher_forks_cpu_workers_and_starts_gpu_workers_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    monkeypatch.setattr("search.execution.launch.ForkedProcess",
                        lambda main, argv, env, log: started.append("forked"))
    monkeypatch.setattr("search.execution.launch.subprocess.Popen",
                        lambda *args, **kwargs: started.append("cold"))
    cpu = plan_workers(workers=1, gpus=None, trials_per_gpu=1)[0]
    gpu = plan_workers(workers=None, gpus=["0"], trials_per_gpu=1)[0]
    Worker(0, {**os.environ, **cpu}, tmp_path / "a.log", main=search_run.main).start([])
    Worker(1, {**os.environ, **gpu}, tmp_path / "b.log", main=search_run.main).start([])
    assert started == ["forked", "cold"]
