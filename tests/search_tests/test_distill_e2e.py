"""Distillation end to end: a teacher from a refit's runs:/ URI or from a state dict, a digits
study that searches the distill loss, the report's loss families, and every bad teacher."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from search import report
from search.execution.session import SearchOptions, open_search
from search.refit import main as refit_main
from search.run import main as run_main
from tests.search_tests.conftest import client, load_study

pytestmark = pytest.mark.slow  # real searches, processes or servers

# The distillation, and a sound optimizer under it (the digits recipe's), so that what is
# measured is the teacher's effect rather than a sampled learning rate's.
DISTILL = {"loss": "distill", "distill_temperature": 3.0, "distill_alpha": 0.7,
           "distill_base": "cross_entropy", "optimizer": "adamw", "lr": 1e-3, "lr_decay": 1.0,
           "penalty": "none", "freeze_depth": 0}


def refit_model_uri(workdir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A teacher as a user makes one: a tiny search, then search.refit of its best trial."""
    assert run_main(["--study", "digits", "--name", "teacher", "--trials", "2", "--epochs", "2",
                     "--pruner", "none"]) == 0
    assert refit_main(["--study", "digits", "--name", "teacher"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("-> MLflow run ")[1].split()[0]
    return f"runs:/{run_id}/model"


def test_a_study_with_a_teacher_searches_distillation(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = refit_model_uri(workdir, capsys)

    search = open_search(SearchOptions(study="digits", trials=3, epochs=2, pruner="none",
                                       device="cpu", teacher=teacher,
                                       recipes="none"))  # the queued distillations run first
    assert search.study.study_name == "digits-distill"  # its own study: other loss choices
    search.study.enqueue_trial(DISTILL)
    search.study.enqueue_trial({**DISTILL, "distill_alpha": 0.1, "distill_base": "focal"})
    search.optimize()
    search.close()

    study = load_study(workdir, "digits-distill")
    assert study.user_attrs["teacher"] == teacher
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    distilled = [t for t in trials if t.params["loss"] == "distill"]
    assert len(distilled) >= 2
    mlflow_client = client(workdir)
    for trial in distilled:
        assert trial.value > 0.5  # a teacher that learned digits 5-9 does not hurt
        run = mlflow_client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.params["loss"] == "distill"
        assert {"distill_temperature", "distill_alpha", "distill_base", "lr_decay"} <= set(
            run.data.params)
    assert {t.params["distill_base"] for t in distilled} >= {"cross_entropy", "focal"}
    assert "focal_gamma" in next(t for t in distilled if t.params["distill_base"] == "focal"
                                 ).params

    # The report answers "which loss is best" with distill as a family of its own.
    assert report.main(["--study", "digits", "--name", "digits-distill"]) == 0
    folder = workdir / "mlruns" / "reports" / "digits-distill"
    with open(folder / "loss_families.csv") as f:
        families = {row["loss"]: row for row in csv.DictReader(f)}
    assert int(families["distill"]["trials"]) == len(distilled)
    assert sum(int(row["trials"]) for row in families.values()) == 3

    # Resuming without the teacher is refused; so is a teacher on a study made without one.
    capsys.readouterr()
    assert run_main(["--study", "digits", "--name", "digits-distill", "--trials", "4"]) == 2
    assert "give --teacher" in capsys.readouterr().err
    assert run_main(["--study", "digits", "--name", "teacher", "--trials", "3",
                     "--teacher", teacher]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--name NEW" in err[0]

    # search.refit of a distilled trial finds the study's teacher by itself.
    best = max(distilled, key=lambda t: t.value)
    assert refit_main(["--study", "digits", "--name", "digits-distill", "--trial",
                       str(best.number)]) == 0
    assert "test_accuracy" in capsys.readouterr().out


def test_a_state_dict_teacher(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from objectives.digits import load_digits_task
    from objectives.teacher import load_teacher

    task = load_digits_task(cache_dir=workdir / "mlruns" / "cache", seed=0)
    path = workdir / "teacher.pt"
    torch.save(task.make_model(0).state_dict(), path)
    teacher = load_teacher(path, arch="study", task=task)
    with torch.inference_mode():
        logits = teacher(task.data.val.x[:7])  # uint8 images in
    assert logits.shape == (7, 5) and not teacher.training

    assert run_main(["--study", "digits", "--trials", "1", "--epochs", "1", "--teacher",
                     str(path), "--teacher-arch", "study"]) == 0
    study = load_study(workdir, "digits-distill")
    assert study.user_attrs["teacher_arch"] == "study"


def logged_model(workdir: Path, module: nn.Module) -> str:
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    mlflow.set_experiment("models")
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(module, name="model", serialization_format="pickle")
    return f"runs:/{run.info.run_id}/model"


class ThreeClasses(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 3)


@pytest.mark.parametrize(("case", "expected"), [
    ("missing file", "teacher file"),
    ("no arch", "--teacher-arch NAME"),
    ("unknown arch", "unknown --teacher-arch 'vgg99'"),
    ("garbage", "cannot be read"),
    ("wrong head", "does not fit the study's model with 5 classes"),
    ("arch without teacher", "--teacher-arch goes with --teacher"),
    ("unknown run", "cannot load teacher runs:/0123456789abcdef/model"),
    ("three classes", "predicts 3 classes; the study's data has 5"),
])
def test_a_bad_teacher_is_one_line_before_any_trial(
        case: str, expected: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "teacher.pt"
    arch = ["--teacher-arch", "study"]
    if case == "missing file":
        teacher = [str(path), *arch]
    elif case == "no arch":
        path.write_bytes(b"x")
        teacher = [str(path)]
    elif case == "unknown arch":
        path.write_bytes(b"x")
        teacher = [str(path), "--teacher-arch", "vgg99"]
    elif case == "garbage":
        path.write_bytes(b"not a torch file")
        teacher = [str(path), *arch]
    elif case == "wrong head":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        torch.save(model.state_dict(), path)
        teacher = [str(path), *arch]
    elif case == "unknown run":
        teacher = ["runs:/0123456789abcdef/model"]
    elif case == "three classes":
        teacher = [logged_model(workdir, ThreeClasses())]
    else:
        teacher = []
    argv = ["--study", "digits", "--trials", "1", "--epochs", "1"]
    argv += ["--teacher", *teacher] if teacher else ["--teacher-arch", "study"]
    capsys.readouterr()
    assert run_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.out + captured.err  # tracebacks go to stderr
    journal = workdir / "mlruns" / "optuna.journal"
    assert not journal.exists() or "digits-distill" not in journal.read_text()
