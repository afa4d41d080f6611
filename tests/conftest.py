"""Every test runs offline: any download attempt goes to a closed port on loopback and fails.

Loaders and the weights API must never reach the internet from a test (CI has no network, and
traffic may only go to loopback). Python's urllib, which torchvision and torch.hub download
with, honours these variables; set here, at import, they also reach every subprocess.
"""

from __future__ import annotations

import os

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused

for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[variable] = CLOSED
for variable in ("no_proxy", "NO_PROXY"):
    os.environ[variable] = "localhost,127.0.0.1,::1"


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """A safety net: no child process a failed test left behind may hold the run open at exit.

    multiprocessing joins its live non-daemon children when the interpreter exits; a writer
    process that a failing test never closed would make the whole run wait for it.
    """
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=10)
