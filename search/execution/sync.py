"""Making a study's MLflow view whole again from its Optuna record (python -m search.sync): fail
the trials of dead workers on this host, find or rebuild the experiment and parent run, rebuild
the runs of finished trials; then the same for the study's race, if it has one."""

from __future__ import annotations

import optuna

from search.core import names
from search.core.errors import UsageError, first_line
from search.core.urls import mask_text, mask_url
from search.execution import recovery
from search.tracking import end_lost_run
from search.tracking.rebuild import (
    SyncReport,
    TrackingClient,
    TrackingStoreError,
    end_parent,
    find_parent,
    note_warning,
    sync_study,
    tracking_client,
)
from search.tracking.tracker import EXPERIMENT_KIND


def sync(*, study: str, name: str | None = None, storage: str | None = None,
         tracking_uri: str | None = None, settle: float = 30.0) -> SyncReport:
    """The command: open the stores, fail lost trials, find the parent run, sync the trials."""
    import spaces
    from search.core.runtime import quiet_libraries
    from search.storage.reading import load
    from search.storage.stores import check_tracking_store, resolve
    from search.study import lookup as studies
    from search.study.target import pick_target

    quiet_libraries()
    stores = resolve(storage=storage, tracking_uri=tracking_uri)
    check_tracking_store(stores.tracking_uri)  # refused at once, not after minutes of retries
    try:  # --study names a search space (and --name the study), or the Optuna study itself
        spec: spaces.Study | None = studies.find(study, storage=stores.storage, name=name)
    except UsageError as e:
        spec, unknown = None, str(e)
    name = name or (spec.name if spec is not None else study)
    try:
        found = load(stores.storage, name, study)  # an unknown study: exit 2, nothing created
    except UsageError:
        if spec is None:
            raise UsageError(f"{unknown}, and no Optuna study {study!r} in "
                             f"{mask_url(stores.storage)}") from None
        raise
    stored = found.user_attrs.get(names.SPACE)
    if stored in spaces.STUDIES:
        spec = spaces.STUDIES[stored]
    if spec is None:
        raise UsageError(f"study {name!r} records no search space: give --study SPACE "
                         f"--name {name}")
    metrics, _ = pick_target(found, spec.metric)
    try:
        client = tracking_client(stores.client_uri)
        experiment = client.get_experiment_by_name(name)
    except Exception as e:  # any store or server error, as one line
        raise UsageError(f"cannot open tracking store {mask_url(stores.tracking_uri)!r}: "
                         f"{mask_text(first_line(e), stores.tracking_uri)}") from None
    if experiment is not None and experiment.lifecycle_stage != "active":
        raise UsageError(f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments "
                         "restore) or purge it (mlflow gc) before a sync")
    warnings: list[str] = []
    try:
        lost = _fail_lost(found, client, experiment.experiment_id if experiment else None,
                          warnings)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=stores.artifact_location, tags=EXPERIMENT_KIND)
        report, parent = _sync_runs(found, client, experiment_id, lost=lost,
                                    metrics=tuple(metrics), settle=settle,
                                    tags={"search.storage": mask_url(stores.storage)})
        race = found.user_attrs.get(names.RACE_STUDY)
        if race:
            report.race = _sync_race(stores.storage, race, client, experiment_id, parent,
                                     metrics=tuple(metrics), settle=settle, warnings=warnings)
    except TrackingStoreError as e:
        raise UsageError(f"tracking store {mask_url(stores.tracking_uri)!r}: "
                         f"{mask_text(first_line(e), stores.tracking_uri)}") from None
    report.warnings = warnings
    return report


def _fail_lost(study: optuna.Study, client: TrackingClient, experiment_id: str | None,
               warnings: list[str]) -> list[int]:
    """Fail the trials of dead workers on this host, ending their runs; their numbers."""
    return recovery.fail_lost_trials(
        study, lost=recovery.local_worker_dead,
        on_lost=lambda trial, reason, retry: note_warning(
            warnings, end_lost_run(client, experiment_id, trial, reason, retry)))


def _sync_runs(study: optuna.Study, client: TrackingClient, experiment_id: str, *,
               lost: list[int], metrics: tuple[str, ...], settle: float, tags: dict[str, str],
               role: str = "study") -> tuple[SyncReport, str]:
    """The study's parent run found or rebuilt, and a run for each of its finished trials;
    (the report, the parent run's id)."""
    parent, rebuilt = find_parent(study, client, experiment_id, metrics=metrics, tags=tags,
                                  role=role)
    report = sync_study(study, client, experiment_id=experiment_id, parent_run_id=parent,
                        metrics=metrics, settle_seconds=settle, fresh=lost)
    if rebuilt:
        end_parent(study, client, parent)
    report.lost, report.parent_rebuilt = lost, rebuilt
    return report, parent


def _sync_race(storage: str, name: str, client: TrackingClient, experiment_id: str, parent: str,
               *, metrics: tuple[str, ...], settle: float, warnings: list[str]
               ) -> SyncReport | None:
    """The study's race (search.execution.race) as the study: its lost runs failed, its run
    found or rebuilt under the study's run, a run for each of its finished runs."""
    from search.storage.reading import load

    try:
        race = load(storage, name, name)
    except UsageError:
        warnings.append(f"the study names its race {name!r}, which is not in the storage: "
                        "its runs were not synced")
        return None
    lost = _fail_lost(race, client, experiment_id, warnings)
    report, run = _sync_runs(race, client, experiment_id, lost=lost, metrics=metrics,
                             settle=settle, tags={"mlflow.parentRunId": parent}, role="race")
    if client.get_run(run).data.tags.get("mlflow.parentRunId") != parent:
        client.set_tag(run, "mlflow.parentRunId", parent)  # the study's run was rebuilt
    return report
