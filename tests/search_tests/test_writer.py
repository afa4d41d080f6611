"""The MLflow writer process: a dead writer never holds the search at exit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import os, signal, sys
from search.writer import Writer, _noop

writer = Writer(sys.argv[1])
os.kill(writer._process.pid, signal.SIGKILL)
writer._process.join()
# Far more than a pipe's buffer (64 KiB): the queue's feeder thread blocks writing it.
for _ in range(100):
    writer.send("a large request", _noop, "x" * 10_000)
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
