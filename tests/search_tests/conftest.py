from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from objectives.digits import load_digits_task
from search.core.names import OVER_BUDGET


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits backbone pretrained once for the whole session, as search.run caches it."""
    cache = tmp_path_factory.mktemp("digits-cache")
    load_digits_task(cache_dir=cache, seed=0)
    return cache


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_cache: Path) -> Path:
    """A fresh folder to run searches in, its mlruns/cache sharing the pretrained backbone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "cache").symlink_to(digits_cache, target_is_directory=True)
    return tmp_path


def load_study(workdir: Path, name: str = "digits") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(workdir / "mlruns" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def client(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")


def ran(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that ran, each with an MLflow run: all but those that lost the race
    for the budget's last places (ended at once, untracked:
    search.study.optuna_study.over_budget)."""
    return [t for t in study.trials if t.user_attrs.get("fail_reason") != OVER_BUDGET]


def runs(workdir: Path, experiment: str = "digits") -> tuple[list, list]:
    """(study parent runs, trial runs) of an experiment."""
    mlflow = client(workdir)
    found = mlflow.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    all_runs = mlflow.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("search.role") == "study"]
    trials = [r for r in all_runs if "optuna.trial_number" in r.data.tags]
    return parents, trials
