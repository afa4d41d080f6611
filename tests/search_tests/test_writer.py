"""The MLflow writer process: a dead writer is replaced, nothing sent to it is lost, a second
death stops tracking visibly, its failures leave their reason in a log, and it never holds the
search at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.tracking import Tracker
from search.tracking.writer import Writer, _noop

pytestmark = pytest.mark.slow  # real searches, processes or servers

SCRIPT = """
import os, signal, sys
from search.tracking.writer import Writer, _noop

if __name__ == "__main__":
    writer = Writer(sys.argv[1], replacements=0)
    writer.flush()  # up and ready
    # Far more than a pipe's buffer (64 KiB): the queue's feeder thread blocks writing it.
    for _ in range(100):
        writer.send("a large request", _noop, "x" * 10_000)
    os.kill(writer._process.pid, signal.SIGKILL)
    writer._process.join()
    print("queued", flush=True)
"""


def test_a_killed_writer_does_not_hold_the_exit(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout == "queued\n"
    assert seconds < 60  # start-up (spawning the writer) included; it used to never end


def _kill(writer: Writer) -> None:
    os.kill(writer._process.pid, signal.SIGKILL)
    writer._process.join()


def _trials(tracker: Tracker, parent: str, numbers: range, *, kill_after: int | None = None,
            ) -> dict[int, str | None]:
    """Log `numbers` trials (three epochs and an artifact each); kill the writer once right
    after trial `kill_after` was sent, before the writer could confirm it."""
    ids = {}
    for number in numbers:
        run = tracker.trial_run(parent_run_id=parent, trial_number=number,
                                params={"number": number}, tags={})
        for epoch in (1, 2, 3):
            run.log_epoch(epoch, {"val_accuracy": number + epoch / 10})
        run.add_artifact("note.txt", f"trial {number}")
        run.finish("COMPLETE", metrics={"final_val_accuracy": number + 0.3})
        if number == kill_after:
            _kill(tracker.writer)
        ids[number] = run.run_id
    return ids


def _children(client: MlflowClient, tracker: Tracker) -> dict[int, list]:
    by_number: dict[int, list] = {}
    for run in client.search_runs([tracker.experiment_id], max_results=1000):
        if "optuna.trial_number" in run.data.tags:
            by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    return by_number


def test_a_killed_writer_is_replaced_and_nothing_it_was_sent_is_lost(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri=uri, experiment="replaced", log_dir=tmp_path / "logs")
    parent = tracker.study_run(run_id=None, name="replaced", params={}, tags={})
    tracker.flush()  # the writer is up: its death now is a death, not a failed start
    ids = _trials(tracker, parent, range(8), kill_after=3)
    tracker.close()

    assert tracker.lost is None
    assert any("was killed by signal 9" in e and "a new writer took over" in e
               for e in tracker.errors), tracker.errors
    client = MlflowClient(uri)
    by_number = _children(client, tracker)
    assert sorted(by_number) == list(range(8))
    for number, found in by_number.items():
        assert len(found) == 1, f"trial {number} has {len(found)} runs"  # none made twice
        run = found[0]
        assert run.info.run_id == ids[number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.metrics["final_val_accuracy"] == number + 0.3
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]  # none lost, none repeated
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    assert not list((tmp_path / "logs").glob("*.log"))  # empty logs are not kept


def test_a_second_death_stops_tracking_and_says_so(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri=uri, experiment="lost", log_dir=tmp_path / "logs")
    parent = tracker.study_run(run_id=None, name="lost", params={}, tags={})
    tracker.flush()
    _trials(tracker, parent, range(2), kill_after=1)
    tracker.flush()  # the replacement is up
    _kill(tracker.writer)
    started = time.monotonic()
    ids = _trials(tracker, parent, range(2, 4))
    tracker.close()

    assert time.monotonic() - started < 10  # nothing waits on a writer that is gone
    assert tracker.lost is not None and "died again" in tracker.lost
    assert ids == {2: None, 3: None}  # dropped, not pretended
    assert sorted(_children(MlflowClient(uri), tracker)) == [0, 1]


def _crash(client: object, run_id: object) -> None:
    print("the writer's last words", file=sys.stderr, flush=True)
    raise SystemExit(7)  # not an Exception: nothing in the writer catches it


def test_a_writer_that_fails_leaves_its_reason_in_its_log(tmp_path: Path) -> None:
    writer = Writer(f"sqlite:///{tmp_path / 'mlflow.db'}", log_dir=tmp_path / "logs",
                    replacements=0)
    writer.flush()
    writer.send("crash", _crash)
    writer._process.join(timeout=60)
    writer.flush()  # sees the death
    writer.close()

    assert writer.lost is not None
    assert "exited with status 7" in writer.lost
    logs = list((tmp_path / "logs").glob("writer-*.log"))
    assert len(logs) == 1 and str(logs[0]) in writer.lost  # the warning names the log
    assert "the writer's last words" in logs[0].read_text()


def test_a_failed_start_is_started_again(tmp_path: Path) -> None:
    writer = Writer(f"sqlite:///{tmp_path / 'mlflow.db'}", log_dir=tmp_path / "logs",
                    replacements=0)
    _kill(writer)  # before it could say it is ready
    writer.send("a request", _noop)
    writer.flush()
    writer.close()
    assert writer.lost is None  # a start that failed is not a lost writer
    assert any("before it was ready" in e and "started again" in e for e in writer.errors)
