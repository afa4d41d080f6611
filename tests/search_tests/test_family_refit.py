"""search.refit --per-family: each family's best refit with several seeds, compared fairly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from search import refit, report
from search.run import main as run
from tests.search_tests.conftest import client, load_study
from tests.support import one_error_line

pytestmark = pytest.mark.slow  # real searches and refits

BALANCED = ["--study", "digits", "--epochs", "2", "--trials", "6", "--balance", "loss",
            "--choices", "loss=cross_entropy,focal,mse"]


def test_per_family_refits_give_intervals_and_the_verdict_rests_on_them(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(BALANCED) == 0
    capsys.readouterr()
    assert refit.main(["--study", "digits", "--per-family", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "loss families, each best trial refit with 2 seeds" in out
    study = load_study(workdir)
    kept = study.user_attrs["family_refits:loss"]
    assert kept["seeds"] == [0, 1] and set(kept["families"]) == {"cross_entropy", "focal", "mse"}
    for family, row in kept["families"].items():
        best = max((t for t in study.trials if t.params["loss"] == family and t.value),
                   key=lambda t: t.value)
        assert row["trial"] == best.number and row["params"] == best.params
        assert all(0 <= v <= 1 for m in ("test_accuracy", "test_macro_f1", "test_ece",
                                         "test_corruption_accuracy") for v in row[m])
        assert len(row["test_accuracy"]) == 2 and len(row["runs"]) == 2
    # Each refit is its own MLflow run, tagged with its family and seed.
    mlflow = client(workdir)
    experiment = mlflow.get_experiment_by_name("digits")
    assert experiment is not None
    refits = mlflow.search_runs([experiment.experiment_id],
                                "tags.`search.family_of` = 'loss'")
    assert sorted((r.data.tags["search.family"], r.data.tags["search.refit_seed"])
                  for r in refits) == sorted((f, s) for f in kept["families"] for s in "01")
    assert all("test_accuracy" in r.data.metrics for r in refits)
    folder = workdir / "mlruns" / "reports" / "digits" / "refits-loss"
    with (folder / "per_family_loss.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["vs best"] == "best"
    for row in rows:
        low, mean, high = (float(row[f"accuracy_{k}"]) for k in ("low", "mean", "high"))
        assert low <= mean <= high
    assert {r["vs best"] for r in rows[1:]} <= {"within noise", "worse beyond noise"}

    assert report.main(["--study", "digits"]) == 0
    out = capsys.readouterr().out
    said = (workdir / "mlruns" / "reports" / "digits" / "verdict.md").read_text()
    assert "from refits of each family's best trial with 2 seeds" in said
    assert "points of test accuracy" in said or "It is the baseline" in said
    assert out.index("Verdict (loss, from refits") < out.index("trials of study 'digits' by")


def test_per_family_bad_input_is_one_line(workdir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert refit.main(["--study", "digits", "--seeds", "2"]) == 2
    assert "--seeds goes with --per-family" in one_error_line(capsys.readouterr().err,
                                                                "search.refit")
    assert run(["--study", "digits", "--epochs", "1", "--trials", "2"]) == 0
    capsys.readouterr()
    assert refit.main(["--study", "digits", "--per-family", "--trial", "0"]) == 2
    assert "leave --trial out" in one_error_line(capsys.readouterr().err, "search.refit")
    assert refit.main(["--study", "digits", "--per-family", "dropout"]) == 2
    assert "--per-family" in one_error_line(capsys.readouterr().err, "search.refit")
