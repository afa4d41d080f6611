"""A trial's artifacts go where its run keeps them, without asking the store again for a run
the writer made (MlflowClient.log_artifacts reads the whole run back to find the location)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from search.tracking.tracker import _log_artifacts
from search.tracking.writer import create_run, find_or_create_run

ARTIFACTS: dict[str, Any] = {"report.txt": "precision 1.0\n", "model/weights.bin": b"\x00\x01"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)  # the default artifact root is relative: keep it in tmp_path
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _counting_get_run(client: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = client._tracking_client.get_run  # what MlflowClient.log_artifacts calls

    def get_run(run_id: str) -> Any:
        calls.append(run_id)
        return real(run_id)

    monkeypatch.setattr(client._tracking_client, "get_run", get_run)
    return calls


def _downloaded(client: MlflowClient, run_id: str, tmp_path: Path) -> dict[str, bytes]:
    folder = Path(client.download_artifacts(run_id, "", str(tmp_path / f"down-{run_id}")))
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _expected() -> dict[str, bytes]:
    return {k: v.encode() if isinstance(v, str) else v for k, v in ARTIFACTS.items()}


def test_the_artifacts_of_a_run_the_writer_made_need_no_get_run(
        client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = client.create_experiment("digits")
    run_id = create_run(client, None, experiment, "trial-0", {"optuna.trial_number": "0"})
    calls = _counting_get_run(client, monkeypatch)
    _log_artifacts(client, run_id, ARTIFACTS)
    assert calls == []
    monkeypatch.undo()
    assert _downloaded(client, run_id, tmp_path) == _expected()


def test_a_run_found_again_or_made_elsewhere_gets_its_artifacts_too(
        client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = client.create_experiment("digits")
    parent = client.create_run(experiment, run_name="digits").info.run_id
    tags = {"mlflow.parentRunId": parent, "optuna.trial_number": "3"}
    made = client.create_run(experiment, run_name="trial-3", tags=tags).info.run_id
    elsewhere = client.create_run(experiment, run_name="other").info.run_id
    # A replacement writer finds the run its dead predecessor made: the location comes along.
    assert find_or_create_run(client, None, experiment, "trial-3", tags) == made
    calls = _counting_get_run(client, monkeypatch)
    _log_artifacts(client, made, ARTIFACTS)
    assert calls == []
    _log_artifacts(client, elsewhere, ARTIFACTS)  # unknown here: MLflow looks it up
    assert calls == [elsewhere]
    monkeypatch.undo()
    for run_id in (made, elsewhere):
        assert _downloaded(client, run_id, tmp_path) == _expected()
