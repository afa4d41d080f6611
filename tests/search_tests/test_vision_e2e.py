"""search.run on image studies, offline: torchvision's on-disk formats built by the tests, and a
ResNet-18 state dict saved here, checked through Optuna and MLflow as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torchvision
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from objectives.backbones import weights_file
from search.run import main
from spaces.vision import RESOLUTIONS
from tests.fake_data import write_cifar, write_image_folder
from tests.search_tests.conftest import client, load_study, runs
from tests.support import one_error_line

pytestmark = pytest.mark.slow  # real searches, processes or servers

CIFAR10_CLASSES = tuple(f"class{c:02d}" for c in range(10))  # as tests/fake_data.py names them


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), train=300, test=100)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def no_studies(workdir: Path) -> bool:
    journal = workdir / "mlruns" / "optuna.journal"
    return not journal.exists() or not optuna.get_all_study_names(
        JournalStorage(JournalFileBackend(str(journal))))


def cifar_args(cifar_dir: Path, weights: Path, *more: str) -> list[str]:
    return ["--study", "cifar10", "--data-dir", str(cifar_dir), "--weights", str(weights),
            "--device", "cpu", "--resolution", "32", "--epochs", "2", *more]


def test_cifar10_search_end_to_end(workdir: Path, cifar_dir: Path, resnet18_file: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cifar_args(cifar_dir, resnet18_file, "--trials", "2", "--pruner", "none")) == 0
    assert "2 of 2 finished" in capsys.readouterr().out

    study = load_study(workdir, "cifar10")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert {k: study.user_attrs[k] for k in ("backbone", "resolution", "init", "epochs")} == {
        "backbone": "resnet18", "resolution": 32, "init": "file", "epochs": 2}
    parents, trials = runs(workdir, "cifar10")
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert parent.data.params["backbone"] == "resnet18"
    assert parent.data.params["resolution"] == "32"
    assert parent.data.tags["search.device"] == "cpu"
    mlflow = client(workdir)
    for trial in study.trials:
        run = next(r for r in trials if r.info.run_id == trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["device"] == "cpu"
        assert run.data.params["resolution"] == "32"
        assert run.data.params["freeze_depth"] == str(trial.params["freeze_depth"])
        for name in ("weight_decay", "warmup_epochs", "batch_size", "loss", "optimizer"):
            assert run.data.params[name] == str(trial.params[name])
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == [1, 2]
        config = json.loads(Path(mlflow.download_artifacts(
            run.info.run_id, "config.json", str(workdir))).read_text())
        assert config["resolution"] == 32
        csv = Path(mlflow.download_artifacts(run.info.run_id, "confusion_matrix.csv",
                                             str(workdir))).read_text().splitlines()
        # The class names come from the data set's own meta file.
        assert csv[0].split(",")[1:] == list(CIFAR10_CLASSES)
        assert sum(int(v) for row in csv[1:] for v in row.split(",")[1:]) == 30  # val: 10%


def test_imagefolder_searches_resolution_and_resumes(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_image_folder(tmp_path / "pets", classes=("cat", "dog", "frog"),
                                per_class=20, size=(24, 24))
    args = ["--study", "imagefolder", "--data-dir", str(folder), "--device", "cpu",
            "--backbone", "mobilenet_v3_small", "--no-pretrained", "--epochs", "1",
            "--pruner", "none"]
    assert main([*args, "--trials", "2"]) == 0
    # Resuming needs none of the study's settings again, and extends the budget.
    assert main(["--study", "imagefolder", "--data-dir", str(folder), "--device", "cpu",
                 "--trials", "3"]) == 0
    capsys.readouterr()
    study = load_study(workdir, "imagefolder")
    assert study.user_attrs["backbone"] == "mobilenet_v3_small"
    assert study.user_attrs["init"] == "random"
    assert study.user_attrs["resolution"] == "search"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    mlflow = client(workdir)
    for trial in study.trials:
        assert trial.params["resolution"] in RESOLUTIONS
        run_id = trial.user_attrs["mlflow_run_id"]
        config = json.loads(Path(mlflow.download_artifacts(
            run_id, "config.json", str(tmp_path))).read_text())
        assert config["resolution"] == trial.params["resolution"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--study", "digits", "--backbone", "resnet18"],
         "--backbone does not apply to study 'digits'"),
        (["--study", "digits", "--resolution", "64"],
         "--resolution does not apply to study 'digits'"),
        (["--study", "cifar10", "--backbone", "vgg11"],
         "unknown backbone 'vgg11'; known backbones: resnet18, resnet34, resnet50"),
        (["--study", "cifar10", "--weights", "w.pt", "--no-pretrained"],
         "--weights PATH and --no-pretrained contradict each other"),
        (["--study", "cifar10", "--resolution", "4"], "--resolution: must be 'search' or at "
                                                      "least 8 pixels, got 4"),
        (["--study", "imagefolder"], "study 'imagefolder' needs --data-dir PATH"),
    ],
)
def test_options_that_do_not_apply(argv: list[str], expected: str, workdir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (workdir / "mlruns" / "optuna.journal").exists()


def test_bad_data_and_weights(workdir: Path, cifar_dir: Path, resnet18_file: Path,
                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        return one_error_line(capsys.readouterr().err)

    missing = tmp_path / "nowhere.pt"
    line = error(cifar_args(cifar_dir, missing))
    assert str(missing) in line and "no such file" in line

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(2000))
    assert str(corrupt) in error(cifar_args(cifar_dir, corrupt))

    wrong = tmp_path / "resnet50-shaped.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), wrong)
    assert "resnet18" in error(cifar_args(cifar_dir, wrong))

    truncated = tmp_path / "truncated"
    (truncated / "cifar-10-batches-py").mkdir(parents=True)
    for source in (cifar_dir / "cifar-10-batches-py").iterdir():
        data = source.read_bytes()
        target = truncated / "cifar-10-batches-py" / source.name
        target.write_bytes(data[: len(data) // 2] if source.name == "data_batch_3" else data)
    line = error(cifar_args(truncated, resnet18_file))
    assert "data_batch_3" in line and "corrupt or truncated" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in error(["--study", "imagefolder", "--data-dir", str(empty)])

    folder = write_image_folder(tmp_path / "pets", per_class=20)
    (folder / "emu").mkdir()
    assert "emu" in error(["--study", "imagefolder", "--data-dir", str(folder)])
    assert no_studies(workdir)  # the data is checked before anything is created


def test_resume_with_another_backbone_or_without_the_weights_file(
    workdir: Path, cifar_dir: Path, resnet18_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cifar_args(cifar_dir, resnet18_file, "--trials", "1", "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(cifar_args(cifar_dir, resnet18_file, "--backbone", "resnet34",
                           "--epochs", "1")) == 2
    assert "created with backbone resnet18, not backbone resnet34" in one_error_line(
        capsys.readouterr().err)
    assert main(["--study", "cifar10", "--data-dir", str(cifar_dir), "--device", "cpu"]) == 2
    assert "give --weights PATH again" in one_error_line(capsys.readouterr().err)


def _offline_run(argv: list[str], cwd: Path, torch_home: Path) -> subprocess.CompletedProcess:
    # tests/conftest.py points every proxy at a closed loopback port: the download is really
    # attempted, and fails at once, without any traffic leaving the machine.
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    return subprocess.run([sys.executable, "-m", "search.run", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_offline_without_data_or_weights_says_what_to_download(
    tmp_path: Path, cifar_dir: Path
) -> None:
    torch_home = tmp_path / "torch-home"
    no_data = _offline_run(["--study", "cifar10", "--data-dir", "data", "--device", "cpu"],
                           tmp_path, torch_home)
    assert no_data.returncode == 2
    line = one_error_line(no_data.stderr)
    assert "data_batch_1" in line and "cifar-10-python.tar.gz" in line
    assert "--data-dir" in line

    no_weights = _offline_run(["--study", "cifar10", "--data-dir", str(cifar_dir),
                               "--device", "cpu"], tmp_path, torch_home)
    assert no_weights.returncode == 2
    line = one_error_line(no_weights.stderr)
    checkpoints = torch_home / "hub" / "checkpoints" / weights_file("resnet18")
    assert str(checkpoints) in line and "--weights PATH" in line
    assert no_studies(tmp_path)


def test_imagenet_weights_staged_where_torchvision_looks(
    workdir: Path, cifar_dir: Path, resnet18_file: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / weights_file("resnet18")).symlink_to(resnet18_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert main(["--study", "cifar10", "--data-dir", str(cifar_dir), "--device", "cpu",
                 "--resolution", "32", "--epochs", "1", "--trials", "1"]) == 0
    capsys.readouterr()
    assert load_study(workdir, "cifar10").user_attrs["init"] == "imagenet"
