"""A user's own study without editing the package: a file, a module, an installed entry point;
found again by its name from every command; listed by `--study` alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState

import spaces
from search.core.errors import UsageError
from search.report import main as report_main
from search.run import main
from search.study.lookup import REFERENCE, find
from tests.search_tests.conftest import load_study, runs
from tests.support import one_error_line

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model.py"
FAST = ["--epochs", "2", "--pruner", "none"]
MODULE = """
from spaces import Study
from spaces.digits import STUDY as DIGITS
import dataclasses
STUDY = dataclasses.replace(DIGITS, name="{name}", description="{name}, installed")
"""


@pytest.mark.slow
def test_a_study_from_a_file_runs_resumes_and_reports_by_its_name(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--study", str(EXAMPLE), "--trials", "2", *FAST]) == 0
    study = load_study(workdir, "own-model")
    assert study.user_attrs[REFERENCE] == str(EXAMPLE)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    # Found again by the name it stored, from search.run and search.report alike.
    assert main(["--study", "own-model", "--trials", "3", *FAST]) == 0
    assert len(load_study(workdir, "own-model").trials) == 3
    _, trial_runs = runs(workdir, "own-model")
    assert len(trial_runs) == 3
    assert report_main(["--study", "own-model"]) == 0
    assert (workdir / "mlruns" / "reports" / "own-model" / "trials.csv").is_file()

    # Another file under the same study name is refused, with one line.
    other = workdir / "other.py"
    shutil.copy(EXAMPLE, other)
    capsys.readouterr()
    assert main(["--study", str(other), "--trials", "4", *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"was created from {EXAMPLE}, not {other}" in line


@pytest.mark.slow
def test_a_study_from_a_module_and_from_an_installed_package(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = workdir / "site"
    site.mkdir()
    (site / "my_studies.py").write_text(MODULE.format(name="from-module"))
    (site / "their_studies.py").write_text(MODULE.format(name="from-package"))
    # An installed distribution that adds a study through the entry-point group.
    info = site / "their_studies-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: their-studies\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{spaces.registry.ENTRY_POINTS}]\nfrom-package = their_studies:STUDY\n")
    monkeypatch.syspath_prepend(str(site))

    assert main(["--study", "my_studies:STUDY", "--trials", "1", *FAST]) == 0
    assert load_study(workdir, "from-module").user_attrs[REFERENCE] == "my_studies:STUDY"
    assert ("from-package", "installed: their_studies:STUDY") in spaces.available()
    assert main(["--study", "from-package", "--trials", "1", *FAST]) == 0
    assert REFERENCE not in load_study(workdir, "from-package").user_attrs  # found by name


@pytest.mark.parametrize(("reference", "expected"), [
    ("missing.py", "no study file missing.py"),
    ("empty.py", "empty.py defines no STUDY"),
    ("broken.py", "loading broken.py failed: ZeroDivisionError"),
    ("nosuchmodule:STUDY", "cannot import 'nosuchmodule'"),
    ("os:path", "os:path is a module, not a spaces.Study"),
    ("nope", "unknown study 'nope'; known studies: cifar10,"),
])
def test_a_study_that_cannot_load_is_one_line(
        reference: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.py").write_text("X = 1\n")
    (tmp_path / "broken.py").write_text("1 / 0\n")
    with pytest.raises(UsageError) as caught:
        find(reference, storage=str(tmp_path / "optuna.journal"))
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "optuna.journal").exists()  # nothing created


def test_study_alone_lists_the_studies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--study"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "cifar10" in out and "my_study.py" in out
