"""Several workers on one study: the journal file, PostgreSQL and Redis (servers of our own on
loopback), lost workers, a preempted launcher, a restarted database. Checked through Optuna and
MLflow as a user would."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search.bench.servers import (
    PostgresServer,
    RedisServer,
    postgres_available,
    postgres_server,
    redis_available,
    redis_server,
)
from search.storage.optuna_storage import open_storage
from tests.search_tests.conftest import client, ran, runs

pytestmark = pytest.mark.slow  # real searches, processes or servers

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    if (reason := postgres_available()) is not None:
        pytest.fail(reason)
    with postgres_server(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if (reason := redis_available()) is not None:
        pytest.fail(reason)
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


def search(workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "search.run", "--study", "digits", *args],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    # One per URL: a new RDB storage per poll would open a connection pool each time, and
    # the polls alone used up PostgreSQL's connections (max_connections) during a test.
    return open_storage(url)


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_storage(storage))


def wait_for_running(study_storage: str, name: str, *, epochs: int,
                     timeout: float = 180) -> optuna.trial.FrozenTrial:
    """A RUNNING trial that has reported at least `epochs` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = load(study_storage, name).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            trials = []
        for trial in trials:
            if len(trial.intermediate_values) >= epochs and "worker" in trial.user_attrs:
                return trial
        time.sleep(0.1)
    raise AssertionError(f"no trial reached epoch {epochs} within {timeout}s")


def wait_for_run_end(workdir: Path, experiment: str, number: int, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        _, trial_runs = runs(workdir, experiment)
        run = next(r for r in trial_runs if r.data.tags["optuna.trial_number"] == str(number))
        if run.info.status != "RUNNING" or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def check_nothing_left_running(workdir: Path, study: optuna.Study) -> None:
    states = {t.state for t in study.trials}
    assert TrialState.RUNNING not in states
    parents, trials = runs(workdir, study.study_name)
    assert all(r.info.status != "RUNNING" for r in [*parents, *trials])


@pytest.mark.parametrize("kind", ["journal", "postgres", "redis"])
def test_workers_share_one_budget(kind: str, workdir: Path, request: pytest.FixtureRequest
                                  ) -> None:
    name = f"digits-{kind}"
    storage = {"journal": str(workdir / "mlruns" / "optuna.journal"),
               "postgres": lambda: request.getfixturevalue("postgres").url,
               "redis": lambda: request.getfixturevalue("redis").url}[kind]
    storage = storage() if callable(storage) else storage
    code, output = finish(search(workdir, "--name", name, "--storage", storage, "--workers",
                                 "2", "--trials", "8", "--epochs", "10", "--pruner", "none"))
    assert code == 0, output
    assert "RuntimeWarning" not in output  # forked workers start without runpy's warning
    study = load(storage, name)
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == 8  # exactly: the trial another worker runs counts toward it
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials
    check_nothing_left_running(workdir, study)
    parents, trial_runs = runs(workdir, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trial_runs) == len(ran(study))
    assert len({r.data.tags["optuna.trial_number"] for r in trial_runs}) == len(trial_runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in trial_runs)
    if kind == "postgres":
        password = request.getfixturevalue("postgres").password
        assert password not in output
        logs = (workdir / "mlruns" / "logs" / name).glob("*.log")
        assert all(password not in log.read_text() for log in logs)
        assert password.encode() not in (workdir / "mlruns" / "mlflow.db").read_bytes()
        assert parents[0].data.tags["search.storage"].count("***") == 1


def test_six_workers_finish_exactly_the_budget(workdir: Path) -> None:
    code, output = finish(search(workdir, "--workers", "6", "--trials", "12", "--epochs", "3",
                                 "--pruner", "none"))
    assert code == 0, output
    study = load(str(workdir / "mlruns" / "optuna.journal"), "digits")
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == 12
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(study.trials) == 12 + len(failed)  # nothing run beyond the budget
    check_nothing_left_running(workdir, study)


def test_a_node_killed_whole_leaves_nothing_running_after_a_rerun(workdir: Path) -> None:
    # kill -9 of the whole process group: the launcher, its workers and their MLflow writers
    # at once (a node crash, the OOM killer on the group, a hard job kill). The writers die
    # with the workers, so a lost run's id may never have reached Optuna.
    storage = str(workdir / "mlruns" / "optuna.journal")
    args = ["--study", "digits", "--workers", "2", "--trials", "6", "--epochs", "30",
            "--pruner", "none", "--checkpoint-every", "0"]
    node = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_running(storage, "digits", epochs=2)
    os.killpg(node.pid, signal.SIGKILL)
    node.wait()
    lost = [t.number for t in load(storage, "digits").trials if t.state == TrialState.RUNNING]
    assert lost

    code, output = finish(search(workdir, *args[2:]))
    assert code == 0, output
    study = load(storage, "digits")
    assert len([t for t in study.trials if t.state in FINISHED]) == 6
    check_nothing_left_running(workdir, study)
    _, trial_runs = runs(workdir, "digits")
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in trial_runs}
    for number in lost:
        trial = study.trials[number]
        assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "worker lost"
        retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == number)
        run = by_number[number]
        assert run.info.status == "FAILED"
        assert run.data.tags["optuna.fail_reason"] == "worker lost"
        assert run.data.tags["search.retried_by_trial"] == str(retry.number)
        assert by_number[retry.number].data.tags["search.retry_of_trial"] == str(number)


def test_a_worker_killed_mid_trial_is_retried_from_its_checkpoint(workdir: Path) -> None:
    storage = str(workdir / "mlruns" / "optuna.journal")
    launcher = search(workdir, "--workers", "2", "--trials", "4", "--epochs", "40",
                      "--pruner", "none", "--checkpoint-every", "0")
    victim = wait_for_running(storage, "digits", epochs=3)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    code, output = finish(launcher)
    assert code == 0, output

    study = load(storage, "digits")
    lost = study.trials[victim.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == "worker lost"
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number)
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert sorted(retry.intermediate_values) == list(range(1, 41))  # kept, then continued
    mlflow = client(workdir)
    # The lost trial's run is ended by the launcher, or by the dead worker's MLflow writer
    # when the worker died before Optuna held the run's id.
    lost_run = wait_for_run_end(workdir, "digits", lost.number)
    assert lost_run.info.status == "FAILED"
    assert lost_run.data.tags["optuna.fail_reason"] == "worker lost"
    retry_run = mlflow.get_run(retry.user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["search.retry_of_trial"] == str(lost.number)
    # Not from scratch: the checkpoint is written after each report, so it may be one epoch
    # behind the 3 reported when the worker was killed.
    assert int(retry_run.data.tags["search.resumed_from_epoch"]) >= 2
    assert len([t for t in study.trials if t.state in FINISHED]) >= 4
    check_nothing_left_running(workdir, study)
    assert not list((workdir / "mlruns" / "checkpoints").rglob("*.pt"))  # all removed


def test_sigterm_stops_the_launcher_and_a_rerun_resumes(workdir: Path) -> None:
    storage = str(workdir / "mlruns" / "optuna.journal")
    args = ["--workers", "2", "--trials", "4", "--epochs", "40", "--pruner", "none",
            "--checkpoint-every", "0"]
    launcher = search(workdir, *args)
    wait_for_running(storage, "digits", epochs=3)
    started = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    code, output = finish(launcher, timeout=120)
    assert code == 128 + signal.SIGTERM, output
    assert time.monotonic() - started < 60
    study = load(storage, "digits")
    check_nothing_left_running(workdir, study)
    # The running trials were interrupted (a trial may also have failed on its own before).
    reasons = {t.number: t.user_attrs.get("fail_reason") for t in study.trials
               if t.state == TrialState.FAIL}
    interrupted = [t for t in study.trials if reasons.get(t.number) == "interrupted"]
    assert interrupted, (reasons, output)
    assert not [r for r in reasons.values() if str(r).startswith("worker lost")], reasons
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert {t.system_attrs["failed_trial"] for t in waiting} == {t.number for t in interrupted}
    assert client(workdir).get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == \
        "KILLED"

    code, output = finish(search(workdir, *args))
    assert code == 0, output
    study = load(storage, "digits")
    assert len([t for t in study.trials if t.state in FINISHED]) >= 4
    resumed = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert resumed and all(t.state == TrialState.COMPLETE for t in resumed)
    mlflow = client(workdir)
    assert any(int(mlflow.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get(
        "search.resumed_from_epoch", 0)) >= 2 for t in resumed)  # a checkpoint at most one
    # epoch behind the 3 reported
    check_nothing_left_running(workdir, study)


def test_workers_survive_a_postgres_restart(workdir: Path, postgres: PostgresServer) -> None:
    name = "digits-restart"
    launcher = search(workdir, "--name", name, "--storage", postgres.url, "--workers", "2",
                      "--trials", "8", "--epochs", "10", "--pruner", "none")
    wait_for_running(postgres.url, name, epochs=2)
    postgres.restart()
    code, output = finish(launcher)
    assert code == 0, output
    study = load(postgres.url, name)
    assert len([t for t in study.trials if t.state in FINISHED]) >= 8
    assert postgres.password not in output


def test_heartbeat_fails_a_lost_nodes_trial_and_another_node_retries_it(
    workdir: Path, postgres: PostgresServer
) -> None:
    # Two "nodes" on one PostgreSQL storage; node A dies whole (no launcher sees it), so only
    # Optuna's heartbeat can tell: node B fails A's trial once it goes stale, and retries it.
    name = "digits-heartbeat"
    args = ["--name", name, "--storage", postgres.url, "--epochs", "40", "--pruner", "none",
            "--heartbeat", "1", "--checkpoint-every", "0"]
    node_a = search(workdir, *args, "--trials", "1")
    victim = wait_for_running(postgres.url, name, epochs=3)
    node_a.kill()
    node_a.communicate()
    code, output = finish(search(workdir, *args, "--trials", "3"))
    assert code == 0, output
    study = load(postgres.url, name)
    lost = study.trials[victim.number]
    assert lost.state == TrialState.FAIL
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number)
    assert retry.state == TrialState.COMPLETE
    lost_run = wait_for_run_end(workdir, name, lost.number)
    assert lost_run.info.status == "FAILED"
    assert lost_run.data.tags["optuna.fail_reason"].startswith("worker lost")


@pytest.mark.parametrize("kind", ["journal", "redis"])
def test_a_node_that_dies_whole_on_a_journal_is_recovered_by_another_node(
    kind: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    # Two "nodes" (names of their own) on one journal storage, which Optuna gives no
    # heartbeat; node A dies whole, so no process on A is left to see it: node B fails A's
    # trial once its heartbeat is older than the grace period (2 x --heartbeat), and retries it.
    name = f"digits-{kind}-node"
    storage = (str(workdir / "mlruns" / "optuna.journal") if kind == "journal"
               else request.getfixturevalue("redis").url)
    args = ["-m", "search.run", "--study", "digits", "--name", name, "--storage", storage,
            "--epochs", "40", "--pruner", "none", "--heartbeat", "1", "--checkpoint-every", "0"]
    node_a = subprocess.Popen([sys.executable, *args, "--trials", "1"], cwd=workdir,
                              env={**os.environ, "FINETUNE_SEARCH_NODE": "node-a"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    victim = wait_for_running(storage, name, epochs=3)
    assert victim.system_attrs["heartbeat"] > 0  # A beats on the journal
    os.killpg(node_a.pid, signal.SIGKILL)  # the search, its writer: the whole node
    node_a.wait()
    died = time.time()
    node_b = subprocess.Popen([sys.executable, *args, "--trials", "3"], cwd=workdir,
                              env={**os.environ, "FINETUNE_SEARCH_NODE": "node-b"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, output = finish(node_b)
    assert code == 0, output
    study = load(storage, name)
    lost = study.trials[victim.number]
    assert lost.state == TrialState.FAIL and lost.datetime_complete is not None
    # Within the bound: B's start-up, then the grace period (2 s) from A's last beat.
    assert lost.datetime_complete.timestamp() - died < 60
    retry = next((t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number),
                 None)
    assert retry is not None, [(t.number, t.state, t.system_attrs, t.user_attrs)
                               for t in study.trials]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"].startswith("node-b:")
    assert len([t for t in study.trials if t.state in FINISHED]) == 3
    lost_run = wait_for_run_end(workdir, name, lost.number)
    assert lost_run.info.status == "FAILED"
    assert lost_run.data.tags["optuna.fail_reason"] == "worker lost (no heartbeat)"
    assert lost_run.data.tags["search.retried_by_trial"] == str(retry.number)
    check_nothing_left_running(workdir, study)


def test_two_nodes_on_postgres_and_an_mlflow_server(workdir: Path, postgres: PostgresServer,
                                                     tmp_path: Path) -> None:
    # The multi-node set-up of the README, on one machine: every node runs the same command
    # with the same --storage and --tracking-uri; they start together, so both race to make
    # the study and its parent run.
    from mlflow import MlflowClient

    from search.bench.servers import mlflow_server

    name = "digits-nodes"
    with mlflow_server(tmp_path / "mlflow") as server:
        args = ["--name", name, "--storage", postgres.url, "--tracking-uri", server.url,
                "--trials", "6", "--epochs", "8", "--pruner", "none"]
        nodes = [search(workdir, *args), search(workdir, *args)]
        results = [finish(node) for node in nodes]
        assert all(code in (0, 1) for code, _ in results), results
        assert any(code == 0 for code, _ in results), results
        study = load(postgres.url, name)
        assert len([t for t in study.trials if t.state in FINISHED]) >= 6
        mlflow = MlflowClient(server.url)
        experiment = mlflow.get_experiment_by_name(name)
        assert experiment is not None
        all_runs = mlflow.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in all_runs if r.data.tags.get("search.role") == "study"]
        trial_runs = [r for r in all_runs if "optuna.trial_number" in r.data.tags]
        assert len(parents) == 1  # one parent run, whichever node made it
        assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
        assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {
            parents[0].info.run_id}
        assert len(trial_runs) == len(ran(study))
        assert len({t.user_attrs["worker"] for t in study.trials}) == 2
        # Artifacts went through the server to its artifact destination, and load back.
        complete = next(t for t in study.trials if t.state == TrialState.COMPLETE)
        local = mlflow.download_artifacts(complete.user_attrs["mlflow_run_id"], "config.json",
                                          str(tmp_path))
        assert Path(local).read_text().startswith("{")
        for _, output in results:
            assert postgres.password not in output
