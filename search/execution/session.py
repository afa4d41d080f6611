"""One search session: open the study and its stores, run trials until the budget, close.

`search.run` is its command line; the benchmark drives it directly.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

import spaces
from objectives.data import Task
from objectives.interrupts import check_stop
from search.core import names
from search.core.errors import DeviceFailed, TrackingLost, UsageError, first_line
from search.core.runtime import (
    device_tags,
    limit_gpu_memory,
    load_task,
    pick_device,
    quiet_libraries,
)
from search.core.urls import mask_text, mask_url
from search.execution import recovery
from search.execution.trial import TrialRunner, Variant
from search.storage import stores as stores_module
from search.storage.optuna_storage import open_storage, unavailable
from search.study import balance as balance_module
from search.study import grid as grid_module
from search.study import lookup as studies
from search.study import narrowing as narrowing_module
from search.study import recipes as recipes_module
from search.study import warmstart
from search.study.optuna_study import (
    Budget,
    OverBudget,
    committed_count,
    finished_count,
    make_pruner,
    make_sampler,
    open_study,
    over_budget,
    state_counts,
)
from search.study.plan import Plan, SearchOptions, Stored, plan, study_name
from search.study.settings import RESOLUTION_SEARCH
from search.tracking import Tracker

Callback = Callable[[optuna.Study, FrozenTrial], None]



SETTLE_SECONDS = 30.0  # another node's trial this recent may still be being written by its writer


@dataclass
class Search:
    spec: spaces.Study
    study: optuna.Study
    stores: stores_module.Stores
    tracker: Tracker
    parent_run_id: str
    budget: int
    settings: spaces.Settings
    options: spaces.TaskOptions
    device: str
    compile: bool = False
    run_tags: dict[str, str] = field(default_factory=dict)
    owner: bool = True  # ends the study's parent run on close (a launcher's workers do not)
    metrics: tuple[str, ...] = ()  # the values a trial returns (more than one: multi-objective)
    checkpoint_seconds: float = 30.0
    teacher: Any = None  # a distilling study's teacher (uint8 images to logits), on the CPU
    # After close: finished trials without an MLflow run (0), or None when that could not be
    # checked (the tracking store did not answer).
    untracked: int | None = 0
    recovered: set[int] = field(default_factory=set)  # trials this process failed as lost
    fixed: tuple[str, ...] = ()  # parameters held at one value (--fix): tagged on every run
    grid: bool = False  # runs the queued points of --grid only
    balance: balance_module.Balance | None = None  # --balance: each family its share of trials
    notes: list[str] = field(default_factory=list)  # what the command tells its user as it opens
    variant: Variant | None = None  # a race's runs (search.execution.race), not the search's

    @property
    def epochs(self) -> int:
        return self.settings.epochs

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def finished(self) -> int:
        return finished_count(self.study)

    def task(self) -> Task:
        """The study's task, on the device, loaded once per process."""
        return load_task(self.spec, self.options, self.device)

    def optimize(self, *, timeout: float | None = None, n_trials: int | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        """Run trials until the study has its budget of finished trials (or the timeout).

        `n_trials` stops after that many more trials of this process (the benchmark's steps).
        """
        # Trials of a worker that stopped beating (RDB storages) must not hold the budget: fail
        # and retry them now, as Optuna does itself before each trial it starts.
        recovery.fail_stale_trials(self.study)
        if committed_count(self.study) >= self.budget:
            return
        tags = device_tags(self.device)
        if self.fixed:
            tags["search.fixed"] = ",".join(self.fixed)
        runner = TrialRunner(study=self.spec, task=self.task(), tracker=self.tracker,
                             parent_run_id=self.parent_run_id, settings=self.settings,
                             device=self.device, compile=self.compile, tags=tags,
                             checkpoint_dir=self.stores.checkpoint_dir, metrics=self.metrics,
                             checkpoint_seconds=self.checkpoint_seconds, teacher=self.teacher,
                             variant=self.variant)
        failures = _FailureGuard(limit=max(self.budget, 10))
        limit_gpu_memory(self.device)
        if self.grid:
            grid_module.only_queued(self.study)
        if self.balance is not None:
            balance_module.round_robin(self.study, self.balance)
        recovery.claim_at_birth(self.study)

        def objective(trial: optuna.Trial) -> float:
            if over_budget(trial.study, trial.number, self.budget):
                trial.set_user_attr(names.FAIL_REASON, names.OVER_BUDGET)
                trial.study.stop()
                raise OverBudget(names.OVER_BUDGET)
            return runner(trial)

        try:
            check_stop()  # a SIGTERM lost while the search was starting
            self.study.optimize(
                objective, n_trials=n_trials, timeout=timeout, catch=(Exception,),
                # check_stop: no trial starts after a SIGTERM whose KeyboardInterrupt was lost
                callbacks=[*callbacks, failures, self._stop_untracked, Budget(self.budget),
                           lambda _study, _trial: check_stop()],
                # A failed or pruned trial's memory is freed by the runner itself (see
                # objectives.failures.free_after): a full collection per trial is not needed.
                gc_after_trial=False,
            )
        except grid_module.GridDone:  # every point of the grid is taken
            pass
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: nothing of this process stays RUNNING
            recovery.fail_own_trials(self.study, on_lost=self.end_lost_run)
            raise
        if runner.broken is not None:
            raise DeviceFailed(f"{runner.broken}; this process cannot use the GPU again: run "
                               "the same command again to go on (a launcher's workers are "
                               "replaced on their own)")
        if self.tracker.lost is not None:
            raise TrackingLost(
                f"{self.tracker.lost}; the search stopped rather than run trials that nobody "
                "tracks (their MLflow runs are rebuilt from Optuna's record as it ends, or by "
                f"python -m search.sync --study {self.study.study_name}); run the same command "
                "again to go on")

    def _stop_untracked(self, study: optuna.Study, _: FrozenTrial) -> None:
        """Start no trial once MLflow tracking is lost (the writer died twice)."""
        if self.tracker.lost is not None:
            study.stop()

    def fail_lost_trials(self) -> list[int]:
        """Fail (and queue retries of) RUNNING trials whose worker on this host is gone."""
        return recovery.fail_lost_trials(self.study, lost=recovery.local_worker_dead,
                                         on_lost=self.end_lost_run)

    def end_lost_run(self, trial: FrozenTrial, reason: str, retry: int | None) -> None:
        """What this process does for a trial it failed as lost: end its MLflow run, and
        remember it (its writer is gone: the sync as the search ends rebuilds what it lacks)."""
        self.recovered.add(trial.number)
        self.tracker.end_lost_run(trial, reason, retry)

    def close(self, *, status: str = "FINISHED") -> list[str]:
        """Write everything queued, make MLflow whole (see `_sync`), end the parent run with a
        summary; returns tracking errors. `untracked` then counts finished trials without a run.
        """
        if self.owner:
            self.tracker.flush()
            self._sync()
            self.tracker.end_study_run(self.parent_run_id, status=status,
                                       metrics=_summary(self.study), tags=self.run_tags)
        self.tracker.close()
        return list(self.tracker.errors)

    def _sync(self) -> None:
        """Give every finished trial its MLflow run, from Optuna's record (search.sync): a
        writer that died left some unwritten, or left a run RUNNING.

        This host's trials are settled (its writers are flushed and its workers have exited);
        another node's that finished moments ago are left to that node, whose writer may still
        be writing them.
        """
        from search.tracking.rebuild import FINISHED as DONE
        from search.tracking.rebuild import sync_study

        host = f"{recovery.node()}:"
        local = [t.number for t in self.study.get_trials(deepcopy=False, states=DONE)
                 if str(t.user_attrs.get(recovery.WORKER, "")).startswith(host)]
        local += self.recovered  # another node's, but that node is dead
        try:
            report = sync_study(self.study, self.tracker.client,
                                experiment_id=self.tracker.experiment_id,
                                parent_run_id=self.parent_run_id, metrics=self.metrics,
                                settle_seconds=SETTLE_SECONDS, fresh=local)
        except Exception as e:  # noqa: BLE001 - the store is away: say so, count them all
            self.untracked = None
            self.tracker.errors.append("MLflow: rebuilding runs from Optuna's record failed: "
                                       f"{type(e).__name__}: {first_line(e)}")
            return
        self.untracked = 0
        if report.rebuilt or report.ended:
            self.tracker.errors.append(
                f"MLflow: {report.changes()} from Optuna's record (rebuilt runs "
                "have no artifacts)")


class LostRuns:
    """Who ends the MLflow run of a trial that Optuna's heartbeat fails as lost: the search, once
    it exists. The storage holds the heartbeat's callback and is opened before the search (and
    its tracker) exists, so the callback asks this object each time."""

    def __init__(self) -> None:
        self.search: Search | None = None

    def __call__(self) -> recovery.OnLost | None:
        return self.search.end_lost_run if self.search is not None else None


def open_search(options: SearchOptions) -> Search:
    """Open (or create) the study, its storage and its MLflow parent run; no trial runs yet.

    The data and pretrained weights are loaded first, so that missing or corrupt files are
    reported before anything is created (on `load_device` when given: a launcher checks the
    data on the CPU and leaves the GPUs to its workers). `heartbeat` is Optuna's heartbeat
    interval on RDB storages; `owner=False` (a launcher's worker) leaves the parent run open.
    `worker` (a launcher's worker index) gives each worker its own sampler seed.
    `objectives` (names of OBJECTIVES) makes a multi-objective study; default: the study's
    metric alone. `teacher` (an MLflow model URI, or a state dict file with `teacher_arch`)
    adds the distill loss to the space, so such a study is named apart: `<study>-distill`.
    What the command is to tell its user comes back as the search's `notes`.

    The steps: check the options against the study's space; read what the storage holds;
    make the plan (search.study.plan, no I/O); load the data and teacher; create the Optuna
    study from the plan; open its MLflow run; fail the trials a search killed earlier left.
    """
    stores = stores_module.resolve(storage=options.storage, tracking_uri=options.tracking_uri)
    if options.worker is None:  # a launcher's workers follow its check
        stores_module.check_tracking_store(stores.tracking_uri)
    spec = studies.find(options.study, storage=stores.storage, name=options.name)
    _check_applies(spec, data_dir=options.data_dir, backbone=options.backbone,
                   weights=options.weights, pretrained=options.pretrained,
                   resolution=options.resolution, time_scale=options.time_scale)
    quiet_libraries()
    device = pick_device(options.device)
    if options.teacher_arch is not None and options.teacher is None:
        raise UsageError("--teacher-arch goes with --teacher PATH: give the teacher too")
    name = study_name(options, spec)
    lost = LostRuns()
    storage = open_storage(stores.storage, heartbeat=options.heartbeat,
                           on_stale=recovery.stale_trial_callback(lost))
    stored = _stored(storage, name)
    studies.check_same(stored.attrs, options.study, name=name)
    own = recipes_module.read_files(options.recipe_files) if options.worker is None else []
    planned = plan(options, spec, stored, reference=studies.reference(options.study),
                   own_recipes=own)
    warm = warmstart.gather(
        enqueue_from=options.enqueue_from, enqueue=options.enqueue, sampler=options.sampler,
        storage=options.enqueue_storage, default_storage=stores.storage,
        space=lambda: narrowing_module.parameters(planned.narrowing.apply(spec.space),
                                                  planned.settings))
    task_options = planned.fixed.task_options(spec, cache_dir=stores.cache_dir,
                                              data_dir=options.data_dir,
                                              weights=options.weights,
                                              time_scale=options.time_scale)
    # Bad input (missing or corrupt data, a bad teacher): exit 2 before any trial.
    task = load_task(spec, task_options, options.load_device or device)
    if stored.attrs is None:  # a new study: pin batch sizes that fit its training split
        from search.study import batches

        planned = batches.fit(planned, spec, len(task.data.train),
                              queued=warm.configs if warm is not None else ())
    teacher = _teacher(options, task, stores, planned.settings)
    study = _create_study(planned, storage, options, existing=stored.trials)
    tracker, parent, run_tags = _study_run(planned, spec, study, options, stores, device)
    search = Search(spec=dataclasses.replace(spec, space=planned.narrowing.apply(spec.space)),
                    study=study, stores=stores, tracker=tracker, metrics=planned.metrics,
                    parent_run_id=parent, budget=planned.budget, settings=planned.settings,
                    options=task_options, device=device, compile=options.compile,
                    run_tags=run_tags, owner=options.owner,
                    checkpoint_seconds=options.checkpoint_every, teacher=teacher,
                    fixed=tuple(planned.narrowing.fixed), grid=planned.grid is not None,
                    balance=planned.balance, notes=list(planned.notes))
    if planned.recipes:  # queued by _create_study
        search.notes.append("recipes run first: "
                            + ", ".join(r.name for r in planned.recipes))
    if warm is not None and options.worker is None:  # a launcher's workers: it enqueued them
        queued = warmstart.enqueue(study, warm.configs)
        search.notes.append(f"warm start: {queued} configuration{'s' * (queued != 1)} queued "
                            "to run first" + (f" ({warm.note})" if warm.note else ""))
    lost.search = search
    search.fail_lost_trials()  # a search killed earlier on this host left them RUNNING
    return search


def _teacher(options: SearchOptions, task: Task, stores: stores_module.Stores,
             settings: spaces.Settings) -> Any:
    """A distilling study's teacher, loaded (and so checked) before any trial; else None."""
    if options.teacher is None:
        return None
    from search.study import teacher as teacher_module

    return teacher_module.load(options.teacher, arch=options.teacher_arch, task=task,
                               tracking_uri=stores.client_uri,
                               resolution=settings.resolution or 0)


def _create_study(planned: Plan, storage: Any, options: SearchOptions, *,
                  existing: int) -> optuna.Study:
    """The Optuna study of the plan, with its sampler, pruner and attributes."""
    # A resumed search must not replay the first run's random draws: offset the sampler's
    # seed by the trials already there (deterministic, and different on every resume); and
    # workers started together must not draw the same configs: offset by who they are.
    if options.worker is not None:
        existing += zlib.crc32(f"{recovery.node()}:{options.worker}".encode()) % 1_000_003
    epochs = planned.settings.epochs
    study = open_study(
        name=planned.name, storage=storage, directions=planned.directions,
        sampler=make_sampler(options.sampler, planned.seed + existing),
        # Optuna prunes single-objective studies only: a multi-objective one trains every
        # trial to its last epoch.
        pruner=balance_module.pruner(
            make_pruner(options.pruner if len(planned.metrics) == 1 else "none", epochs=epochs),
            planned.balance, epochs=epochs),
    )
    for key, value in planned.attrs.items():
        study.set_user_attr(key, value)
    if options.worker is None:  # a new study's recipes, first: before any worker or warm start
        for recipe in planned.recipes:
            study.enqueue_trial(dict(recipe.params), user_attrs={names.RECIPE: recipe.name},
                                skip_if_exists=True)
    if planned.grid is not None and options.worker is None:
        grid_module.enqueue(study, planned.grid.points)  # before the launcher's workers start
    return study


def _study_run(planned: Plan, spec: spaces.Study, study: optuna.Study, options: SearchOptions,
               stores: stores_module.Stores, device: str) -> tuple[Tracker, str, dict[str, str]]:
    """The study's tracker, its MLflow parent run (found again on a resume) and that run's
    tags."""
    name = planned.name
    try:
        tracker = Tracker(tracking_uri=stores.client_uri, experiment=name,
                          artifact_location=stores.artifact_location,
                          log_dir=stores.log_dir / name if stores.log_dir else None)
    except Exception as e:  # any store or server error, as one line
        reason = mask_text(first_line(e), stores.tracking_uri)
        raise UsageError(f"cannot open tracking store {mask_url(stores.tracking_uri)!r}: "
                         f"{reason}") from None
    run_tags = {"search.sampler": options.sampler, "search.pruner": options.pruner,
                "search.budget": str(planned.budget),
                "search.storage": mask_url(stores.storage), "search.device": device,
                "optuna.study_name": name, "search.role": "study"}
    run_tags.update({f"search.{k}": v for k, v in device_tags(device).items()})
    if planned.narrowing:
        run_tags["search.narrowing"] = planned.narrowing.describe()
    if planned.balance is not None:
        run_tags["search.balance"] = planned.balance.param
    params: dict[str, Any] = {"study": spec.name, "epochs": planned.settings.epochs,
                              "seed": planned.seed, "metric": ",".join(planned.metrics),
                              "direction": ",".join(planned.directions)}
    if spec.backbone is not None:
        params.update({k: planned.attrs[k] for k in ("backbone", "resolution", "init")})
    if planned.fixed.teacher:
        params["teacher"] = planned.fixed.teacher
    parent = tracker.study_run(run_id=study.user_attrs.get(names.MLFLOW_PARENT_RUN_ID),
                               name=name, params=params, tags=run_tags)
    study.set_user_attr(names.MLFLOW_PARENT_RUN_ID, parent)
    return tracker, parent, run_tags


def _check_applies(spec: spaces.Study, *, data_dir: Any, backbone: Any, weights: Any,
                   pretrained: bool, resolution: Any, time_scale: float | None = None) -> None:
    """Refuse options that mean nothing for this study, or contradict each other."""
    if time_scale is not None and not spec.simulated:
        simulated = ", ".join(n for n, s in spaces.STUDIES.items() if s.simulated)
        raise UsageError(f"--time-scale does not apply to study {spec.name!r}, which trains "
                         f"real models; it applies to simulating studies: {simulated}")
    if spec.backbone is None:
        # A study with a default data folder (cifar10-transfer) reads its data from there.
        given = [flag for flag, value in (("--backbone", backbone), ("--weights", weights),
                                          ("--no-pretrained", not pretrained),
                                          ("--resolution", resolution),
                                          ("--data-dir", spec.data_dir is None and data_dir))
                 if value]
        if given:
            image_studies = ", ".join(n for n, s in spaces.STUDIES.items() if s.backbone)
            brings = "its own model" if spec.data_dir is not None else "its own data and model"
            raise UsageError(f"{given[0]} does not apply to study {spec.name!r}, which brings "
                             f"{brings}; it applies to {image_studies}")
        return
    if weights is not None and not pretrained:
        raise UsageError("--weights PATH and --no-pretrained contradict each other: give one")
    if backbone is not None:
        from objectives.backbones import check_backbone
        from objectives.errors import InputError

        try:
            check_backbone(backbone)  # torchvision's names, or timm:NAME with timm installed
        except InputError as e:
            raise UsageError(str(e)) from None
    if resolution not in (None, RESOLUTION_SEARCH) and not (
        isinstance(resolution, int) and resolution >= 8
    ):
        raise UsageError(f"--resolution must be 'search' or a side of at least 8 pixels, got "
                         f"{resolution!r}")
    if data_dir is None and spec.data_dir is None:
        raise UsageError(f"study {spec.name!r} needs --data-dir PATH: the folder of your data")


class _FailureGuard:
    """Stop a search whose trials keep failing (a broken space, a missing resource)."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.failed = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state.name == "FAIL":
            self.failed += 1
            if self.failed >= self.limit:
                study.stop()


def _stored(storage: Any, name: str) -> Stored:
    """Study `name`'s attrs and its number of trials; (None, 0) for a new study."""
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return Stored(None, 0)
    return Stored(existing.user_attrs, len(existing.get_trials(deepcopy=False)))


def _summary(study: optuna.Study) -> dict[str, float]:
    try:
        counts = state_counts(study)
    except Exception as e:
        if unavailable(e):  # the database is away: end the run anyway
            return {}
        raise
    summary: dict[str, float] = {f"trials_{k.lower()}": float(v) for k, v in counts.items()}
    if len(study.directions) > 1:
        summary["pareto_front_size"] = float(len(study.best_trials))
        return summary
    try:
        summary["best_value"] = float(study.best_value)
    except ValueError:
        pass
    return summary
