"""The cifar10-transfer study as a user runs it, on tiny CIFAR-10 JPEG folders written here:
search, resume, refit and report, the test split read by the refit alone, one-line errors for a
folder that cannot be the task, and the quality benchmark's CPU path."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from objectives.data import Task
from objectives.datasets import CIFAR10_CLASSES
from search.bench.suite import main as bench_main
from search.core import runtime
from search.refit import main as refit_main
from search.report import main as report_main
from search.review import refit as refit_module
from search.run import main
from tests.fake_data import write_image_folder
from tests.search_tests.conftest import load_study, runs
from tests.support import Untouchable, one_error_line, with_test

pytestmark = pytest.mark.slow  # real searches, processes or servers

STUDY = "cifar10-transfer"


@pytest.fixture(scope="module")
def cifar_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10's layout as JPEG folders, 16x16: 300 training images a class (the target needs
    100 to train and 200 to validate on), 10 test images a class."""
    return write_image_folder(tmp_path_factory.mktemp("cifar10-jpg"), classes=CIFAR10_CLASSES,
                              per_class=300, test_per_class=10, size=(16, 16), split=True,
                              fmt="jpg")


def test_search_resume_refit_and_report(workdir: Path, cifar_jpg: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    real_load, real_evaluate = runtime.load_task, refit_module.evaluate
    tests: list[Any] = []

    def load_guarded(*args: Any) -> Task:
        task = real_load(*args)
        tests.append(task.data.test)
        return with_test(task, Untouchable())

    def evaluate_on_the_test_split(model: Any, task: Task, *, resolution: int) -> Any:
        assert isinstance(task.data.test, Untouchable)
        return real_evaluate(model, with_test(task, tests[-1]), resolution=resolution)

    monkeypatch.setattr(runtime, "load_task", load_guarded)
    monkeypatch.setattr(refit_module, "evaluate", evaluate_on_the_test_split)
    data = ["--data-dir", str(cifar_jpg)]
    assert main(["--study", STUDY, *data, "--trials", "3", "--epochs", "2",
                 "--device", "cpu"]) == 0
    assert "3 of 3 finished" in capsys.readouterr().out
    assert main(["--study", STUDY, *data, "--trials", "4", "--device", "cpu"]) == 0  # resumed
    study = load_study(workdir, STUDY)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    # The image studies' space, at the images' own size.
    assert {"loss", "penalty", "optimizer", "lr", "lr_decay", "freeze_depth", "batch_size",
            "warmup_epochs", "weight_decay"} <= set(study.trials[0].params)
    assert "resolution" not in study.trials[0].params
    parents, trial_runs = runs(workdir, STUDY)
    assert len(parents) == 1 and len(trial_runs) == 4
    capsys.readouterr()

    assert refit_main(["--study", STUDY, *data, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"refit of trial {study.best_trial.number}" in out
    assert "test_accuracy" in out and "test_corruption_accuracy" in out
    assert len(tests[-1]) == 50  # the official test images of the five target classes
    assert report_main(["--study", STUDY]) == 0
    assert (workdir / "mlruns" / "reports" / STUDY).is_dir()


@pytest.mark.parametrize(("problem", "expected"), [
    ("no class", "has no class folder 'ship'"),
    ("no test", "has no test/ split"),
    ("backbone", "--backbone does not apply to study 'cifar10-transfer', which brings its own "
                 "model"),
])
def test_bad_folders_and_options_are_one_line_and_create_nothing(
    workdir: Path, tmp_path: Path, problem: str, expected: str,
    capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    more = []
    if problem == "no class":
        write_image_folder(root, classes=tuple(c for c in CIFAR10_CLASSES if c != "ship"),
                           per_class=2, size=(16, 16), split=True, fmt="jpg")
    elif problem == "no test":
        write_image_folder(root / "train", classes=CIFAR10_CLASSES, per_class=2, size=(16, 16))
    else:
        more = ["--backbone", "resnet18"]
    assert main(["--study", STUDY, "--data-dir", str(root), *more]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    journal = workdir / "mlruns" / "optuna.journal"
    assert not journal.exists() or not optuna.get_all_study_names(
        JournalStorage(JournalFileBackend(str(journal))))  # no study created
    assert not (workdir / "mlruns" / "mlflow.db").exists()


@pytest.mark.race  # its searches, child processes as a user runs them, end with their race
def test_quality_benchmark_on_tiny_data(workdir: Path, cifar_jpg: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--only", "quality", "--data-dir", str(cifar_jpg), "--seeds", "0,1",
                       "--quality-trials", "2", "--quality-epochs", "1"]) == 0
    out = capsys.readouterr().out
    for target in ("(a) default search + race", "(b) from the sgd recipe alone",
                   "(c) wall time", "(d) digits"):
        assert target in out
    assert "[target >= +2: " in out and "[target <= 1.6x: " in out
    with (workdir / "mlruns" / "bench" / "quality.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = [r["row"] for r in rows]
    for seed in ("0", "1"):
        mine = [r for r in rows if r["seed"] == seed]
        assert sum(r["row"].startswith("recipe: ") for r in mine) == 2
        assert sum(r["note"] == "chosen on validation" for r in mine) == 1
        for variant in ("old default search: best trial, refit",
                        "default search + race: pick, refit",
                        "from the sgd recipe + race: pick, refit"):
            assert sum(r["row"] == variant for r in mine) == 1
    # Seed 0 alone refits each family's best; medians over both seeds for recipes and search.
    families = [r for r in rows if r["row"].startswith("best ")]
    assert families and {r["seed"] for r in families} == {"0"}
    assert any(n.startswith("best loss=") for n in names)
    assert any(n.startswith("best penalty=") for n in names)
    assert "median: default search + race: pick, refit" in names
    for r in rows:
        for metric in ("test_accuracy", "test_macro_f1", "test_ece",
                       "test_corruption_accuracy"):
            assert 0.0 <= float(r[metric]) <= 1.0
    markdown = (workdir / "mlruns" / "bench" / "quality.md").read_text()
    assert "| recipe: AdamW 1e-3, wd 0.05 |" in markdown and "wall time:" in markdown


@pytest.mark.parametrize(("argv", "expected"), [
    (["--only", "quality"], "--only quality needs --data-dir FOLDER"),
    (["--only", "quality", "--data-dir", "DATA", "--seeds", "0,0"], "lists a seed twice"),
    (["--only", "quality", "--data-dir", "EMPTY"], "no CIFAR-10 in"),
])
def test_quality_benchmark_bad_input(workdir: Path, argv: list[str], expected: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "EMPTY").mkdir()
    (workdir / "DATA").mkdir()
    try:
        status = bench_main(argv)
    except SystemExit as e:  # argparse's own errors: the process exits with this status
        status = int(e.code or 0)
    assert status == 2
    assert expected in one_error_line(capsys.readouterr().err, prog="search.bench")
