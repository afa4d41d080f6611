"""README's commands are the ones CI runs: a new user's test command is the tested one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_command(comment_start: str) -> str:
    """The command under the README's quick-start comment that starts with `comment_start`."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block is not None, "README.md has no bash block"
    lines = block.group(1).splitlines()
    for i, line in enumerate(lines):
        if line.startswith(comment_start):
            return next(x for x in lines[i + 1:] if x and not x.startswith("#"))
    raise AssertionError(f"no {comment_start!r} in README.md's first bash block")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = _readme_command("# 2.")
    ci = (REPO / ".ci" / "run").read_text()
    assigned = re.search(r"^TEST_COMMAND=(.*)$", ci, re.M)
    assert assigned is not None, ".ci/run has no TEST_COMMAND"
    assert shlex.split(assigned.group(1)) == [command]
    assert 'bash -c "$TEST_COMMAND"' in ci


def test_ci_runs_the_test_command_in_a_new_virtual_environment() -> None:
    """Every CI run installs as a newcomer does: a venv made for it, activated before the
    README's command, so no package already on the machine stands in for what it installs."""
    ci = (REPO / ".ci" / "run").read_text()
    made = ci.index('python3 -m venv "$VENV_DIR/venv"')
    activated = ci.index('source "$VENV_DIR/venv/bin/activate"')
    assert 'mktemp -d' in ci and made < activated < ci.index('bash -c "$TEST_COMMAND"')


def test_the_test_command_installs_what_the_tests_need() -> None:
    command = _readme_command("# 2.")
    assert "bash tests/install-services.sh" in command
    assert command.endswith("python -m pytest")
    script = (REPO / "tests" / "install-services.sh").read_text()
    for package in ("postgresql", "redis-server", "chromium"):
        assert f"missing+=({package})" in script
