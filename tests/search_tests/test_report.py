"""search.report on real and hand-made studies: tables, files, MLflow artifacts, read-only."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState, create_trial

from search import report
from search import run as search_run
from tests.search_tests.conftest import client, load_study

pytestmark = pytest.mark.slow  # real searches, processes or servers

SINGLE_PLOTS = ("optimization_history", "learning_curves", "families", "parallel_coordinate",
                "param_importances", "slice")
LOSSES = ("cross_entropy", "focal", "mse")
TINY = ["--study", "digits", "--epochs", "2"]


def journal(workdir: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "mlruns" / "optuna.journal")))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_family_rows(rows: list[dict[str, str]], study: optuna.Study, metric: str,
                       index: int = 0) -> None:
    """Each family's counts and scores are the study's; best family first."""
    with_loss = [t for t in study.trials if "loss" in t.params]
    assert sum(int(r["trials"]) for r in rows) == len(with_loss)
    assert len({r["loss"] for r in rows}) == len(rows)
    for row in rows:
        mine = [t for t in with_loss if t.params["loss"] == row["loss"]]
        assert int(row["trials"]) == len(mine)
        for column, state in (("completed", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                              ("failed", TrialState.FAIL)):
            assert int(row[column]) == sum(t.state == state for t in mine), (row, column)
        scores = [t.values[index] for t in mine if t.state == TrialState.COMPLETE]
        if scores:
            assert float(row[f"best_{metric}"]) == pytest.approx(max(scores))
            assert float(row[f"median_{metric}"]) == pytest.approx(statistics.median(scores))
        else:
            assert row[f"best_{metric}"] == row[f"median_{metric}"] == ""
    bests = [float(r[f"best_{metric}"]) for r in rows if r[f"best_{metric}"]]
    assert bests == sorted(bests, reverse=True)
    assert all(r[f"best_{metric}"] for r in rows[:len(bests)])  # the unscored ones come last


def assert_plots(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert "plotly" in (folder / f"{name}.html").read_text()[:100_000].lower(), name
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_report_of_a_search(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = optuna.create_study(study_name="digits", storage=journal(workdir),
                                direction="maximize")
    for loss in LOSSES:  # at least three families, whatever the sampler draws next
        study.enqueue_trial({"loss": loss})
    # An absurd learning rate (trial 3): the loss blows up and the trial fails.
    study.enqueue_trial({"loss": "cross_entropy", "penalty": "none", "optimizer": "sgd",
                         "lr": 1e12, "freeze_depth": 0, "batch_size": 16})
    # The default pruner (hyperband) stops most trials after their first epoch; then a few
    # unpruned ones, for the importances (they need completed trials).
    with pytest.warns(UserWarning, match="out of range"):
        assert search_run.main([*TINY, "--trials", "4"]) == 0
    assert search_run.main([*TINY, "--trials", "6", "--pruner", "none"]) == 0
    capsys.readouterr()
    study = load_study(workdir)
    journal_file = workdir / "mlruns" / "optuna.journal"
    before = (len(study.trials), journal_file.stat().st_size, journal_file.stat().st_mtime_ns)

    assert report.main(["--study", "digits", "--top", "3"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "Traceback" not in out + captured.err

    # Read-only: the storage is as the search left it.
    after = load_study(workdir)
    assert (len(after.trials), journal_file.stat().st_size,
            journal_file.stat().st_mtime_ns) == before
    assert [t.state for t in after.trials] == [t.state for t in study.trials]

    # Leaderboard: the top row is the study's best trial.
    best = study.best_trial
    top = re.search(r"^│\s+1 │\s+(\d+) │\s+([\d.]+) │", out, re.MULTILINE)
    assert top is not None, out
    assert int(top.group(1)) == best.number
    assert float(top.group(2)) == pytest.approx(best.value, abs=1e-4)
    assert not re.search(r"^│\s+4 │", out, re.MULTILINE)  # --top 3
    assert f"best: trial {best.number} val_accuracy={best.value:.4f}" in out
    counts = {s: sum(t.state == s for t in study.trials) for s in TrialState}
    assert f"{counts[TrialState.COMPLETE]} complete" in out
    assert counts[TrialState.FAIL] == 1 and counts[TrialState.PRUNED] >= 1

    folder = workdir / "mlruns" / "reports" / "digits"
    families = read_csv(folder / "loss_families.csv")
    assert_family_rows(families, study, "val_accuracy")
    assert set(LOSSES) <= {r["loss"] for r in families}
    assert "loss families by val_accuracy" in out
    for row in families:
        assert re.search(rf"│ {row['loss']}\s+│\s+{row['trials']} │\s+{row['completed']} │"
                         rf"\s+{row['pruned']} │\s+{row['failed']} │", out), row["loss"]

    importances = read_csv(folder / "importances.csv")
    ranked = [r for r in importances if r["scope"] == "all trials"]
    assert {r["parameter"] for r in ranked} >= {"lr", "loss"}
    assert sum(float(r["importance"]) for r in ranked) == pytest.approx(1.0)
    # A parameter some completed trials lack (focal_gamma: focal only) is not in the global
    # ranking: it is ranked among the trials that have it, or a note says why not.
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    conditional = {p for t in done for p in t.params} - set.intersection(
        *(set(t.params) for t in done))
    assert conditional and not {r["parameter"] for r in ranked} & conditional
    for name in conditional:
        assert any(r["parameter"] == name and r["scope"] != "all trials"
                   for r in importances) or f"{name}: only 1 completed trial" in out, name
    assert "parameter importances (val_accuracy)" in out
    # Validation only (no refit yet): the verdict says what it rests on, first, and in a file.
    assert out.index("Verdict (loss, on validation only)") < out.index("top 3 trials")
    assert "refit each family's best" in (folder / "verdict.md").read_text()

    trials = read_csv(folder / "trials.csv")
    assert [int(r["number"]) for r in trials] == [t.number for t in study.trials]
    assert [r["user_attrs_mlflow_run_id"] for r in trials] == [
        t.user_attrs["mlflow_run_id"] for t in study.trials]
    failed = next(r for r in trials if r["state"] == "FAIL")
    assert failed["user_attrs_fail_reason"].startswith("diverged")

    assert_plots(folder, SINGLE_PLOTS)
    assert not (folder / "pareto_front.csv").exists()
    assert not (folder / "pareto_front.html").exists()

    # The same files, logged under report/ in the study's MLflow run.
    parent = study.user_attrs["mlflow_parent_run_id"]
    logged = {Path(a.path).name for a in client(workdir).list_artifacts(parent, "report")}
    assert logged == {p.name for p in folder.iterdir()}
    assert f"logged under report/ in MLflow run {parent}" in out


def test_multi_objective_study_shows_its_pareto_front(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = optuna.create_study(study_name="multi", storage=journal(workdir),
                                directions=["maximize", "minimize"])
    study.set_user_attr("objectives", "accuracy,ece")  # as search.run --objectives records it
    distributions = {"loss": CategoricalDistribution(["cross_entropy", "focal", "mse"]),
                     "lr": FloatDistribution(1e-4, 1.0, log=True)}
    # (loss, lr, accuracy, ece): trials 0, 1 and 3 are the front; 2 is dominated by 1.
    for loss, lr, accuracy, ece in (("cross_entropy", 0.01, 0.95, 0.08),
                                    ("focal", 0.003, 0.90, 0.02),
                                    ("focal", 0.1, 0.85, 0.05),
                                    ("mse", 0.3, 0.70, 0.01),
                                    ("mse", 0.5, 0.60, 0.20)):
        study.add_trial(create_trial(params={"loss": loss, "lr": lr},
                                     distributions=distributions, values=[accuracy, ece]))
    study.add_trial(create_trial(params={"loss": "focal", "lr": 0.9},
                                 distributions=distributions, state=TrialState.FAIL))

    assert report.main(["--study", "digits", "--name", "multi"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "Traceback" not in out + captured.err
    assert "Pareto front of study 'multi': 3 trials" in out
    assert "warning: study 'multi' has no MLflow run" in out

    folder = workdir / "mlruns" / "reports" / "multi"
    front = read_csv(folder / "pareto_front.csv")
    assert [int(r["trial"]) for r in front] == [0, 1, 3]  # by accuracy, best first
    assert {int(r["trial"]) for r in front} == {t.number for t in study.best_trials}
    assert [float(r["val_accuracy"]) for r in front] == [0.95, 0.90, 0.70]
    assert [float(r["val_ece"]) for r in front] == [0.08, 0.02, 0.01]
    assert front[0]["loss"] == "cross_entropy"

    families = read_csv(folder / "loss_families.csv")
    assert_family_rows(families, study, "val_accuracy", index=0)
    assert [r["loss"] for r in families] == ["cross_entropy", "focal", "mse"]
    assert families[1]["failed"] == "1"
    assert (folder / "importances.csv").exists()
    assert_plots(folder, ("pareto_front", "parallel_coordinate", "param_importances", "slice"))
    assert not (folder / "optimization_history.html").exists()
    assert not (folder / "learning_curves.png").exists()  # no trial reported epochs
    assert len(read_csv(folder / "trials.csv")) == 6


def test_too_few_trials_skip_with_one_line_each(workdir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    study = optuna.create_study(study_name="few", storage=journal(workdir),
                                direction="maximize")
    # A run id MLflow does not have: the report still writes its files, with a warning.
    study.set_user_attr("mlflow_parent_run_id", "0" * 32)
    distributions: dict[str, BaseDistribution] = {
        "loss": CategoricalDistribution(["cross_entropy", "focal"])}
    study.add_trial(create_trial(params={"loss": "focal"}, distributions=distributions,
                                 value=0.5, intermediate_values={1: 0.4, 2: 0.5}))
    study.add_trial(create_trial(params={"loss": "cross_entropy"}, distributions=distributions,
                                 state=TrialState.PRUNED, intermediate_values={1: 0.1}))
    optuna.create_study(study_name="empty", storage=journal(workdir), direction="maximize")

    assert report.main(["--study", "digits", "--name", "few"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "parameter importances need at least 2 completed trials" in captured.out
    assert "note: param_importances plot skipped: needs at least 2 completed trials" in \
        captured.out
    assert f"warning: report not logged to MLflow run {'0' * 32}" in captured.out
    # A tracking server that does not answer: said at once, and the files are still written.
    assert report.main(["--study", "digits", "--name", "few", "--tracking-uri",
                        "http://127.0.0.1:9"]) == 0
    captured = capsys.readouterr()
    assert "warning: report not logged to MLflow: cannot reach tracking server " \
        "'http://127.0.0.1:9'" in captured.out
    folder = workdir / "mlruns" / "reports" / "few"
    assert not (folder / "importances.csv").exists()
    assert_plots(folder, ("optimization_history", "learning_curves", "families", "slice"))
    assert_family_rows(read_csv(folder / "loss_families.csv"), study, "val_accuracy")

    out = workdir / "empty-report"
    assert report.main(["--study", "digits", "--name", "empty", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    for name in ("optimization_history", "parallel_coordinate", "slice"):
        assert f"note: {name} plot skipped: no completed trial yet" in captured.out
    assert "note: learning_curves plot skipped: no trial reported a value" in captured.out
    assert "note: families plot skipped: no completed trial yet" in captured.out
    assert read_csv(out / "loss_families.csv") == []
    assert sorted(p.name for p in out.iterdir()) == ["loss_families.csv", "penalty_families.csv",
                                                     "trials.csv"]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("search.report: error: ")
    return lines[0]


def test_unknown_study_is_one_line_and_creates_nothing(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal_file = workdir / "mlruns" / "optuna.journal"
    assert report.main(["--study", "digits"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "search.report: error: no study 'digits' in mlruns/optuna.journal: run python -m "
        "search.run --study digits first")
    assert not journal_file.exists()  # a missing journal is not created

    optuna.create_study(study_name="other", storage=journal(workdir))
    size = journal_file.stat().st_size
    assert report.main(["--study", "digits", "--name", "nope"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "search.report: error: no study 'nope' in mlruns/optuna.journal: run python -m "
        "search.run --study digits --name nope first")
    assert journal_file.stat().st_size == size
    assert not (workdir / "mlruns" / "reports").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["--study", "nope"], "unknown study 'nope'"),
    (["--study", "digits", "--storage", "ftp://host/x"], "unsupported storage URL"),
    (["--study", "digits", "--storage", "sqlite:///mlruns/missing.db"], "no study 'digits'"),
    (["--study", "digits", "--top", "0"], "--top: must be a positive integer, got 0"),
    # Port 9 on loopback: nothing listens there, the connection is refused at once.
    (["--study", "digits", "--storage", "postgresql://u:s3cret-pw@127.0.0.1:9/optuna"],
     "cannot open storage 'postgresql://u:***@127.0.0.1:9/optuna'"),
])
def test_bad_input(argv: list[str], expected: str, workdir: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(argv) == 2
    captured = capsys.readouterr()
    assert expected in one_error_line(captured.err)
    assert "s3cret-pw" not in captured.out + captured.err
    assert not (workdir / "mlruns" / "missing.db").exists()
