"""A study's MLflow experiment is a model-training experiment, so that MLflow 3's UI opens it on
its runs rather than on the GenAI overview (test_mlflow_ui.py checks that in a browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.tracking import tracker as tracker_module
from search.tracking.tracker import EXPERIMENT_KIND, Tracker

KIND = "mlflow.experimentKind"


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # The experiment is settled before the writer process starts: no process is needed here.
    monkeypatch.setattr(tracker_module, "Writer", lambda *args, **kwargs: None)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_kind_is_mlflows_model_training_kind() -> None:
    # As MLflow 3's UI spells it (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
    assert EXPERIMENT_KIND == {KIND: "custom_model_development"}


def test_a_new_study_experiment_is_tagged(uri: str) -> None:
    tracker = Tracker(tracking_uri=uri, experiment="digits")
    experiment = MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert experiment.name == "digits"
    assert experiment.tags[KIND] == "custom_model_development"


def test_an_older_experiment_gets_the_tag_on_resume(uri: str) -> None:
    client = MlflowClient(uri)
    old = client.create_experiment("digits")  # as a search made it before the tag
    run = client.create_run(old, run_name="digits").info.run_id
    assert KIND not in client.get_experiment(old).tags

    assert Tracker(tracking_uri=uri, experiment="digits").experiment_id == old
    experiment = client.get_experiment(old)
    assert experiment.tags[KIND] == "custom_model_development"
    assert client.get_run(run).info.run_name == "digits"  # its runs as they were
    # Opened again: nothing changes, nothing fails.
    assert Tracker(tracking_uri=uri, experiment="digits").experiment_id == old
    assert client.get_experiment(old).tags[KIND] == "custom_model_development"


def test_a_kind_already_chosen_is_kept(uri: str) -> None:
    client = MlflowClient(uri)
    chosen = client.create_experiment("digits", tags={KIND: "genai_development"})
    assert Tracker(tracking_uri=uri, experiment="digits").experiment_id == chosen
    assert client.get_experiment(chosen).tags[KIND] == "genai_development"
