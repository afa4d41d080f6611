"""Every test runs offline: any download attempt goes to a closed port on loopback and fails.

Loaders and the weights API must never reach the internet from a test (CI has no network, and
traffic may only go to loopback). Python's urllib, which torchvision and torch.hub download
with, honours these variables; set here, at import, they also reach every subprocess.

No test leaves a process running: see `pytest_runtest_call` below.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import pytest

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused

for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[variable] = CLOSED
for variable in ("no_proxy", "NO_PROXY"):
    os.environ[variable] = "localhost,127.0.0.1,::1"


@pytest.fixture(autouse=True)
def no_default_race(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search in a test, in this process or a child, ends without the race
    (search.study.race) unless the test is marked `race` or asks for one with --race: the race
    retrains a run per finalist and resampling, which a test of anything else neither checks
    nor should wait for (tests/search_tests/test_race.py and the tests marked `race` check it).
    It goes through the variable a user sets a default with."""
    from search.study.race import RACE_ENV

    if request.node.get_closest_marker("race") is None:
        monkeypatch.setenv(RACE_ENV, "none")
    else:
        monkeypatch.delenv(RACE_ENV, raising=False)


@pytest.fixture
def ctrl_c_raises() -> object:
    """In this test SIGINT raises KeyboardInterrupt, as in a terminal; the handler that was there
    is put back after it.

    A shell starts a background job (`nohup python -m pytest &`) with SIGINT ignored, and Python
    then leaves it ignored instead of installing its own handler: a test that sends itself
    SIGINT installs the handler it relies on.
    """
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """A safety net: no child process a failed test left behind may hold the run open at exit.

    multiprocessing joins its live non-daemon children when the interpreter exits; a writer
    process that a failing test never closed would make the whole run wait for it.
    """
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=10)


# Every process a test starts, in-process writers and searches' workers included, inherits this
# variable with the test's own value; what is still running after the test is stopped. A test
# that fails on a timeout (`communicate(timeout=...)` raises and leaves the search running)
# would otherwise leave a launcher and its workers training on every core, and the tests after
# it slow down until they time out too. Servers that fixtures start run before it is set.
TEST_PROCESS = "FINETUNE_SEARCH_TEST_PROCESS"
LEFTOVER_GRACE_SECONDS = 3.0  # for processes on their way out (a writer draining its queue)


def _marked(token: bytes) -> list[int]:
    """Processes other than this one whose environment holds `TEST_PROCESS=token`.

    Left out: multiprocessing's resource tracker, which a process starts once for its whole
    life (this one's serves every later test) and which ends by itself with its owner.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if token in environ.split(b"\0") and b"multiprocessing.resource_tracker" not in command:
            found.append(int(entry.name))
    return found


def _command(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()[:120]
    except OSError:
        return "?"


def _stop_leftovers(token: bytes, nodeid: str) -> None:
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (left := _marked(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not left:
        return
    commands = [f"{pid} {_command(pid)}" for pid in left]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    warnings.warn(f"{nodeid} left {len(left)} processes running, stopped: "
                  + "; ".join(commands), stacklevel=1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    token = f"{os.getpid()}.{time.monotonic_ns()}"
    os.environ[TEST_PROCESS] = token
    try:
        return (yield)
    finally:
        del os.environ[TEST_PROCESS]
        _stop_leftovers(f"{TEST_PROCESS}={token}".encode(), item.nodeid)
