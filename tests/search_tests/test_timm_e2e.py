"""search.run with a timm backbone (`--backbone timm:NAME`) on an image folder built here,
offline and from random weights, checked through Optuna as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.run import main
from tests.fake_data import write_image_folder
from tests.search_tests.conftest import load_study
from tests.support import one_error_line

pytest.importorskip("timm")
pytestmark = pytest.mark.slow  # real searches


def test_imagefolder_search_on_a_timm_backbone(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_image_folder(tmp_path / "pets", classes=("cat", "dog", "frog"),
                                per_class=20, size=(32, 32))
    assert main(["--study", "imagefolder", "--data-dir", str(folder), "--device", "cpu",
                 "--backbone", "timm:test_resnet", "--no-pretrained", "--resolution", "32",
                 "--trials", "2", "--epochs", "1", "--pruner", "none"]) == 0
    assert "2 of 2 finished" in capsys.readouterr().out
    study = load_study(workdir, "imagefolder")
    assert study.user_attrs["backbone"] == "timm:test_resnet"
    assert study.user_attrs["init"] == "random"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        ("timm:not_a_model_at_all", "unknown timm model 'not_a_model_at_all'"),
        ("vgg11", "unknown backbone 'vgg11'; known backbones: resnet18, resnet34, resnet50"),
    ],
)
def test_an_unknown_backbone_is_one_line(
    backbone: str, expected: str, workdir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--study", "imagefolder", "--data-dir", str(tmp_path),
                 "--backbone", backbone]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (workdir / "mlruns" / "optuna.journal").exists()  # nothing made
