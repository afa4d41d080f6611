"""Bad input to search.run: one clear line on stderr, exit status 2, no traceback, no secret."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from search.run import main
from tests.support import one_error_line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--study", "nope"], "unknown study 'nope'; known studies: "
                              + ", ".join(sorted(importlib.import_module("spaces").STUDIES))),
        (["--study", "digits", "--sampler", "bogus"], "invalid choice: 'bogus'"),
        (["--study", "digits", "--pruner", "bogus"], "invalid choice: 'bogus'"),
        (["--study", "digits", "--trials", "0"], "--trials: must be a positive integer, got 0"),
        (["--study", "digits", "--trials", "many"], "--trials: must be a positive integer"),
        (["--study", "digits", "--epochs", "-3"], "--epochs: must be a positive integer, got -3"),
        (["--study", "digits", "--timeout", "0"], "--timeout: must be a positive number"),
        (["--study", "digits", "--storage", "ftp://host/x"], "unsupported storage URL"),
        (["--study", "digits", "--tracking-uri", "file:///tmp/mlruns"],
         "MLflow 3.13+ has no file store"),
        ([], "the following arguments are required: --study"),
    ],
)
def test_bad_arguments(argv: list[str], expected: str, workdir: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expected in one_error_line(captured.err)
    assert not (workdir / "mlruns" / "optuna.journal").exists()


def test_unreachable_storage_hides_its_password(workdir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 on loopback: nothing listens there, the connection is refused at once.
    url = "postgresql://searcher:s3cret-pw@127.0.0.1:9/optuna"
    assert main(["--study", "digits", "--storage", url]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "cannot open storage 'postgresql://searcher:***@127.0.0.1:9/optuna'" in line
    assert "s3cret-pw" not in captured.err + captured.out


def test_unreachable_tracking_database_is_refused_at_once(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # MLflow alone retries its engine for about 100 s, a warning each time; the search refuses
    # the store in one line before it opens the study.
    url = "postgresql://tracker:s3cret-pw@127.0.0.1:9/mlflow"
    assert main(["--study", "digits", "--tracking-uri", url]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "cannot open tracking store 'postgresql://tracker:***@127.0.0.1:9/mlflow'" in line
    assert "check the URL and that the server is reachable" in line
    assert "s3cret-pw" not in captured.err + captured.out
    assert not (workdir / "mlruns" / "optuna.journal").exists()


def test_unreachable_tracking_server_is_refused_at_once(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # MLflow's client alone retries a refused connection with backoff for minutes.
    assert main(["--study", "digits", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot reach tracking server 'http://127.0.0.1:9'" in line
    assert "Connection refused" in line
    assert not (workdir / "mlruns" / "optuna.journal").exists()


@pytest.mark.parametrize("command", ["search.sync", "search.refit"])
def test_other_commands_refuse_an_unreachable_tracking_store(
        command: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(command)
    url = "postgresql://tracker:s3cret-pw@127.0.0.1:9/mlflow"
    assert module.main(["--study", "digits", "--tracking-uri", url]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err, prog=command)
    assert "cannot open tracking store 'postgresql://tracker:***@127.0.0.1:9/mlflow'" in line
    assert "s3cret-pw" not in captured.err + captured.out


def test_mlruns_that_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("a file where the folder should be")
    assert main(["--study", "digits"]) == 2
    assert "cannot write to mlruns/" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_resume_with_other_epochs_is_refused(workdir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--study", "digits", "--trials", "1", "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main(["--study", "digits", "--trials", "2", "--epochs", "3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "created with 2 epochs per trial, not 3" in line


@pytest.mark.slow
def test_command_line_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "search.run", "--study", "cifar-nope"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "unknown study 'cifar-nope'" in one_error_line(result.stderr)


@pytest.mark.parametrize("module", ["search.run", "search.report", "search.refit"])
def test_help_exits_zero(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(module).main
    assert main(["--help"]) == 0
    assert "--study" in capsys.readouterr().out
