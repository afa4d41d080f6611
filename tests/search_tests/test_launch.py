"""The launcher: which GPU each worker gets, what it does when a worker stops, and that it only
watches the study (a storage that does not answer skips one look)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
import pytest
from rich.console import Console

import spaces
from search.core.runtime import MEMORY_FRACTION_ENV
from search.execution.driver import choose_gpus, run
from search.execution.launch import (
    Worker,
    _unless_storage_down,
    launch,
    physical_gpus,
    plan_workers,
)
from search.execution.session import Search, SearchOptions, open_search
from search.run import main
from search.study.display import ProgressDisplay

pytestmark = pytest.mark.slow  # real searches, processes or servers


def test_a_storage_that_does_not_answer_skips_a_look_and_a_bug_still_raises() -> None:
    def database_restarting() -> int:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit")

    def refused() -> int:
        raise ConnectionRefusedError(111, "Connection refused")

    def bug() -> int:
        raise KeyError("a bug")

    assert _unless_storage_down(database_restarting) is None
    assert _unless_storage_down(refused) is None
    assert _unless_storage_down(lambda: 7) == 7
    with pytest.raises(KeyError):
        _unless_storage_down(bug)


# -- which GPU each process gets ---------------------------------------------------------------

def test_gpu_indices_map_through_the_inherited_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert physical_gpus(["1", "0"]) == ["5", "4"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert physical_gpus(["1"]) == ["1"]


class Opened(Exception):
    """Stands for the search opening: what run() decided before it is what the test checks."""


def test_a_lone_worker_on_gpu_1_of_4_5_lands_on_physical_gpu_5(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setattr("search.core.runtime.visible_gpus", lambda: ["0", "1"])
    seen = {}

    def open_search(options: object) -> None:
        seen["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        raise Opened

    monkeypatch.setattr("search.execution.session.open_search", open_search)
    with pytest.raises(Opened):
        run(gpus=["1"], study="cifar10", device="cuda")
    assert seen == {"CUDA_VISIBLE_DEVICES": "5"}


def test_workers_spread_over_the_visible_gpus_and_share_their_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("search.core.runtime.visible_gpus", lambda: ["0", "1"])
    gpus = choose_gpus(None, device="auto")  # --workers 3 without --gpus, on a 2-GPU node
    assert gpus == ["0", "1"]
    plans = plan_workers(workers=3, gpus=gpus, trials_per_gpu=1)
    assert [p["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "1", "0"]
    # Two workers share GPU 0: each may take half of it (less the driver's part); GPU 1's
    # worker has it alone.
    assert [p.get(MEMORY_FRACTION_ENV) for p in plans] == ["0.4750", None, "0.4750"]
    assert choose_gpus(None, device="cpu") is None
    monkeypatch.setattr("search.core.runtime.visible_gpus", lambda: [])
    assert choose_gpus(None, device="auto") is None  # a CPU machine: CPU workers


@pytest.mark.parametrize(("visible", "argv", "expected"), [
    (["0", "1"], ["--gpus", "0,2"], "GPU 2 does not exist (the 2 visible GPU(s) are 0-1)"),
    ([], ["--gpus", "0"], "GPU 0 does not exist (no CUDA device is visible)"),
    (["0"], ["--gpus", "0", "--device", "cpu"], "--gpus does not apply with --device cpu"),
])
def test_gpus_that_do_not_exist_are_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    visible: list[str], argv: list[str], expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("search.core.runtime.visible_gpus", lambda: visible)
    assert main(["--study", "digits", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "mlruns").exists()  # refused before anything was created


# -- what the launcher does when a worker stops -------------------------------------------------

@pytest.fixture
def digits_search(workdir: Path) -> Iterator[Search]:
    search = open_search(SearchOptions(study="digits", trials=2, device="cpu"))
    yield search
    search.close()


def test_a_workers_bad_input_line_reaches_the_launcher(
    digits_search: Search, workdir: Path,
) -> None:
    display = ProgressDisplay(Console(file=io.StringIO()), budget=2, finished=0, metric="m")
    outcome = launch(digits_search, ["--study", "no-such-study"], plan_workers(
        workers=2, gpus=None, trials_per_gpu=1), display, log_dir=workdir / "logs")
    assert outcome.stopped is None
    lines = sorted(outcome.bad_input or [])
    assert [line.split(";")[0] for line in lines] == [
        f"worker {i}: search.run: error: unknown study 'no-such-study'" for i in (0, 1)]
    assert all(name in lines[0] for name in spaces.STUDIES)  # and what the known ones are


def test_a_worker_whose_gpu_failed_is_replaced(
    digits_search: Search, workdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker stopped by a sticky CUDA error (exit status 3, its one line) is replaced;
    the replacement here finishes the study's budget."""
    starts: list[int] = []

    def start(worker: Worker, argv: Sequence[str]) -> None:
        starts.append(worker.index)
        if len(starts) == 1:
            code = ("import sys; print(\"search.run: error: CUDA error, the worker's CUDA "
                    "context is broken: an illegal memory access\", file=sys.stderr); "
                    "sys.exit(3)")
        else:
            code = "import sys; sys.exit(0)"
            for _ in range(2):
                trial = digits_search.study.ask()
                digits_search.study.tell(trial, 0.5)
        worker.log.parent.mkdir(parents=True, exist_ok=True)
        with open(worker.log, "ab") as log:
            worker.process = subprocess.Popen([sys.executable, "-c", code], stdout=log,
                                              stderr=subprocess.STDOUT)

    monkeypatch.setattr(Worker, "start", start)
    warnings: list[str] = []
    display = ProgressDisplay(Console(file=io.StringIO()), budget=2, finished=0, metric="m")
    outcome = launch(digits_search, [], plan_workers(workers=1, gpus=None, trials_per_gpu=1),
                     display, log_dir=workdir / "logs", warn=warnings.append)
    assert starts == [0, 0]  # started, and started again
    assert warnings == ["worker 0 stopped: search.run: error: CUDA error, the worker's CUDA "
                        "context is broken: an illegal memory access"]
    assert outcome.bad_input == [] and outcome.stopped is None


def test_a_sigterm_whose_stop_was_caught_on_the_way_still_stops_the_launcher(
    digits_search: Search, workdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The launcher's Stop is an Exception: code that catches every Exception (a display, a
    storage call) swallows it where the signal lands; the launcher stops all the same."""
    def start(worker: Worker, argv: Sequence[str]) -> None:
        worker.log.parent.mkdir(parents=True, exist_ok=True)
        code = ("import signal, sys, time; "
                "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); time.sleep(60)")
        with open(worker.log, "ab") as log:
            worker.process = subprocess.Popen([sys.executable, "-c", code], stdout=log,
                                              stderr=subprocess.STDOUT)

    def show_and_swallow(*_: object) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here, and this look swallows it
        except Exception:
            pass

    monkeypatch.setattr(Worker, "start", start)
    monkeypatch.setattr("search.execution.launch._show_new", show_and_swallow)
    display = ProgressDisplay(Console(file=io.StringIO()), budget=2, finished=0, metric="m")
    started = time.monotonic()
    outcome = launch(digits_search, [], plan_workers(workers=1, gpus=None, trials_per_gpu=1),
                     display, log_dir=workdir / "logs")
    assert outcome.stopped == signal.SIGTERM
    assert time.monotonic() - started < 30  # not the worker's 60 s


def test_a_worker_that_lost_its_tracking_is_not_replaced(
    digits_search: Search, workdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose MLflow writer died twice (exit status 4, its one line) is not replaced:
    a new one would meet the same tracking store; the launcher reports the line."""
    starts: list[int] = []
    line = ("search.run: error: the MLflow writer died again: the process was killed by "
            "signal 9; the search stopped rather than run trials that nobody tracks")

    def start(worker: Worker, argv: Sequence[str]) -> None:
        starts.append(worker.index)
        worker.log.parent.mkdir(parents=True, exist_ok=True)
        with open(worker.log, "ab") as log:
            worker.process = subprocess.Popen(
                [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); "
                                       "sys.exit(4)"], stdout=log, stderr=subprocess.STDOUT)

    monkeypatch.setattr(Worker, "start", start)
    warnings: list[str] = []
    display = ProgressDisplay(Console(file=io.StringIO()), budget=2, finished=0, metric="m")
    outcome = launch(digits_search, [], plan_workers(workers=1, gpus=None, trials_per_gpu=1),
                     display, log_dir=workdir / "logs", warn=warnings.append)
    assert starts == [0]  # not started again
    assert warnings == [f"worker 0 stopped: {line}"]
    assert outcome.untracked == [f"worker 0: {line}"]
