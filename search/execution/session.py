"""One search session: open the study and its stores, run trials until the budget, close.

`search.run` is its command line; the benchmark drives it directly.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from search.execution.trial import TrialRunner
from search.storage import stores as stores_module
from search.storage.optuna_storage import open_storage, unavailable
from search.study import balance as balance_module
from search.study import grid as grid_module
from search.study import lookup as studies
from search.study import narrowing as narrowing_module
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
from search.study.settings import RESOLUTION_SEARCH, StudySettings, reconcile
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
                             checkpoint_seconds=self.checkpoint_seconds, teacher=self.teacher)
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


@dataclass(frozen=True)
class SearchOptions:
    """What a search is asked to do: search.run's options, typed (the CLI builds this record;
    the benchmarks and tests build it too). See `open_search` for what they mean."""

    study: str
    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    trials: int | None = None
    epochs: int | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int | None = None
    device: str = "auto"
    data_dir: str | Path | None = None
    backbone: str | None = None
    weights: str | Path | None = None
    pretrained: bool = True
    resolution: int | str | None = None
    compile: bool = False
    heartbeat: int = 30
    checkpoint_every: float = 30.0
    objectives: Sequence[str] | None = None
    teacher: str | None = None
    teacher_arch: str | None = None
    fix: Sequence[tuple[str, str]] = ()  # --fix NAME=VALUE, as (name, value text)
    choices: Sequence[tuple[str, str]] = ()  # --choices NAME=A,B, as (name, "A,B")
    grid: Sequence[tuple[str, str]] = ()  # --grid NAME=A,B, with sampler "grid"
    enqueue_from: str | None = None  # STUDY[:K]: warm start from another study's best
    enqueue_storage: str | None = None  # that study's storage (default: this one's)
    enqueue: str | Path | None = None  # a JSON file of configurations to try first
    balance: str | None = None  # "loss" or "penalty": every family the same number of trials
    time_scale: float | None = None  # a simulating study's sleep per simulated second
    # How this process takes part, set by search.run rather than asked for by the user.
    load_device: str | None = None
    owner: bool = True
    worker: int | None = None


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
    """
    # The options as the names this function has always used (some are refined below).
    study, name, storage, tracking_uri = (options.study, options.name, options.storage,
                                          options.tracking_uri)
    trials, epochs, sampler, pruner, seed = (options.trials, options.epochs, options.sampler,
                                             options.pruner, options.seed)
    device, data_dir, backbone, weights, pretrained, resolution = (
        options.device, options.data_dir, options.backbone, options.weights, options.pretrained,
        options.resolution)
    objectives, teacher, teacher_arch = options.objectives, options.teacher, options.teacher_arch
    load_device, worker = options.load_device, options.worker
    stores = stores_module.resolve(storage=storage, tracking_uri=tracking_uri)
    if worker is None:  # a launcher's workers follow its check
        stores_module.check_tracking_store(stores.tracking_uri)
    spec = studies.find(study, storage=stores.storage, name=name)
    _check_applies(spec, data_dir=data_dir, backbone=backbone, weights=weights,
                   pretrained=pretrained, resolution=resolution, time_scale=options.time_scale)
    quiet_libraries()
    device = pick_device(device)
    if teacher_arch is not None and teacher is None:
        raise UsageError("--teacher-arch goes with --teacher PATH: give the teacher too")
    # A teacher changes the loss choices, which an Optuna study cannot change: its own study.
    name = name or (f"{spec.name}-distill" if teacher else spec.name)
    seed = spec.seed if seed is None else seed
    lost_handler: list[Any] = []  # the search's, once it exists (see recovery)
    storage_obj = open_storage(
        stores.storage, heartbeat=options.heartbeat,
        on_stale=recovery.stale_trial_callback(lambda: lost_handler[0] if lost_handler else None),
    )
    teacher_spec = mask_url(teacher) if teacher else None
    requested: dict[str, Any] = {"epochs": epochs,
                                 "objectives": ",".join(objectives) if objectives else None,
                                 "teacher": teacher_spec}
    defaults: dict[str, Any] = {"epochs": spec.epochs, "objectives": None, "teacher": None}
    if spec.backbone is not None:
        requested.update(backbone=backbone, resolution=resolution,
                         init=_init(weights, pretrained) if weights or not pretrained else None)
        defaults.update(backbone=spec.backbone, init="imagenet",
                        resolution=RESOLUTION_SEARCH if spec.resolution is None
                        else spec.resolution)
    stored, existing = _stored(storage_obj, name)
    studies.check_same(stored, study, name=name)
    fixed = StudySettings.from_attrs(
        {**reconcile(stored, requested, defaults, name=name, trials=existing),
         "space": spec.name, "seed": seed, "teacher_arch": teacher_arch}, spec)
    metrics, directions = _objectives(spec, fixed.objectives, sampler)
    if fixed.init == "file" and weights is None:
        raise UsageError(f"study {name!r} was created with a weights file: give --weights PATH "
                         "again to resume it")
    if fixed.teacher and not teacher:
        raise UsageError(f"study {name!r} distils from teacher {fixed.teacher}: give "
                         "--teacher (and --teacher-arch) again to resume it")
    settings = fixed.trial_settings()
    narrowing = narrowing_module.for_study(spec, settings, stored, existing, fix=options.fix,
                                           choices=options.choices, name=name)
    grid = grid_module.for_study(spec, settings, narrowing, stored, sampler=sampler,
                                 asked=options.grid, trials=trials, name=name)
    balance = balance_module.for_study(spec, settings, narrowing, stored, existing,
                                       asked=options.balance, grid=grid is not None, name=name)
    warm = warmstart.gather(
        enqueue_from=options.enqueue_from, enqueue=options.enqueue, sampler=sampler,
        storage=options.enqueue_storage, default_storage=stores.storage,
        space=lambda: narrowing_module.parameters(narrowing.apply(spec.space), settings))
    task_options = fixed.task_options(spec, cache_dir=stores.cache_dir, data_dir=data_dir,
                                      weights=weights, time_scale=options.time_scale)
    task = load_task(spec, task_options, load_device or device)  # bad input: exit 2, nothing made
    teacher_model = None
    if teacher is not None:  # checked here too: a bad teacher is exit 2 before any trial
        from search.study import teacher as teacher_module

        teacher_model = teacher_module.load(
            teacher, arch=teacher_arch, task=task, tracking_uri=stores.client_uri,
            resolution=settings.resolution or 0)
    # A resumed search must not replay the first run's random draws: offset the sampler's
    # seed by the trials already there (deterministic, and different on every resume); and
    # workers started together must not draw the same configs: offset by who they are.
    if worker is not None:
        existing += zlib.crc32(f"{recovery.node()}:{worker}".encode()) % 1_000_003
    optuna_study = open_study(
        name=name, storage=storage_obj, directions=directions,
        sampler=make_sampler(sampler, seed + existing),
        # Optuna prunes single-objective studies only: a multi-objective one trains every
        # trial to its last epoch.
        pruner=balance_module.pruner(
            make_pruner(pruner if len(metrics) == 1 else "none", epochs=settings.epochs),
            balance, epochs=settings.epochs),
    )
    attrs = fixed.attrs(image=spec.backbone is not None)  # search.refit reads them back
    if studies.reference(study):
        attrs[studies.REFERENCE] = studies.reference(study)
    attrs.update(narrowing=narrowing.asked(), choices={k: list(v)
                                                       for k, v in narrowing.pinned.items()})
    for key, value in attrs.items():
        optuna_study.set_user_attr(key, value)
    budget = trials or optuna_study.user_attrs.get(names.BUDGET) or spec.trials
    if balance is not None:
        budget = balance_module.budget(balance, budget)
        optuna_study.set_user_attr(balance_module.BALANCE, balance.param)
        if worker is None:
            print(f"balanced over {len(balance.families)} {balance.param} families: "
                  f"{balance.per_family(budget)} trial{'s' * (balance.per_family(budget) != 1)} "
                  f"each (budget {budget})")
    if grid is not None:
        budget = len(grid.points)
        optuna_study.set_user_attr(grid_module.GRID, grid.axes)
        if worker is None:  # the launcher queued them before its workers started
            grid_module.enqueue(optuna_study, grid.points)
    optuna_study.set_user_attr(names.BUDGET, budget)
    try:
        tracker = Tracker(tracking_uri=stores.client_uri, experiment=name,
                          artifact_location=stores.artifact_location,
                          log_dir=stores.log_dir / name if stores.log_dir else None)
    except Exception as e:  # any store or server error, as one line
        reason = mask_text(first_line(e), stores.tracking_uri)
        raise UsageError(f"cannot open tracking store {mask_url(stores.tracking_uri)!r}: "
                         f"{reason}") from None
    run_tags = {"search.sampler": sampler, "search.pruner": pruner, "search.budget": str(budget),
                "search.storage": mask_url(stores.storage), "search.device": device,
                "optuna.study_name": name, "search.role": "study"}
    run_tags.update({f"search.{k}": v for k, v in device_tags(device).items()})
    if narrowing:
        run_tags["search.narrowing"] = narrowing.describe()
    if balance is not None:
        run_tags["search.balance"] = balance.param
    params: dict[str, Any] = {"study": spec.name, "epochs": settings.epochs, "seed": seed,
                              "metric": ",".join(metrics),
                              "direction": ",".join(directions)}
    if spec.backbone is not None:
        params.update({k: attrs[k] for k in ("backbone", "resolution", "init")})
    if fixed.teacher:
        params["teacher"] = fixed.teacher
    parent = tracker.study_run(
        run_id=optuna_study.user_attrs.get(names.MLFLOW_PARENT_RUN_ID), name=name, params=params,
        tags=run_tags,
    )
    optuna_study.set_user_attr(names.MLFLOW_PARENT_RUN_ID, parent)
    spec = dataclasses.replace(spec, space=narrowing.apply(spec.space))
    search = Search(spec=spec, study=optuna_study, stores=stores, tracker=tracker,
                    metrics=metrics,
                    parent_run_id=parent, budget=budget, settings=settings, options=task_options,
                    device=device, compile=options.compile, run_tags=run_tags,
                    owner=options.owner, checkpoint_seconds=options.checkpoint_every,
                    teacher=teacher_model, fixed=tuple(narrowing.fixed),
                    grid=grid is not None, balance=balance)
    if warm is not None and worker is None:  # a launcher's workers: it enqueued them
        queued = warmstart.enqueue(optuna_study, warm.configs)
        print(f"warm start: {queued} configuration{'s' * (queued != 1)} queued to run first"
              + (f" ({warm.note})" if warm.note else ""))
    lost_handler.append(search.end_lost_run)
    search.fail_lost_trials()  # a search killed earlier on this host left them RUNNING
    return search


def _objectives(spec: spaces.Study, names: Sequence[str],
                sampler: str) -> tuple[tuple[str, ...], list[str]]:
    """The metrics a trial returns and their directions."""
    from search.study.optuna_study import OBJECTIVES

    if not names:
        return (spec.metric,), [spec.direction]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or len(set(names)) != len(names):
        raise UsageError(f"--objectives takes distinct names among {', '.join(OBJECTIVES)}, "
                         f"got {','.join(names)}")
    if len(names) > 1 and sampler == "cmaes":
        raise UsageError("the cmaes sampler optimizes one objective: use tpe, random or gp "
                         "with several --objectives")
    return tuple(OBJECTIVES[n][0] for n in names), [OBJECTIVES[n][1] for n in names]


def _init(weights: str | Path | None, pretrained: bool) -> str:
    """Where a backbone's initial weights come from, as a study setting."""
    if weights is not None:
        return "file"
    return "imagenet" if pretrained else "random"


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


def _stored(storage: Any, name: str) -> tuple[dict[str, Any] | None, int]:
    """Study `name`'s attrs and its number of trials; (None, 0) for a new study."""
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None, 0
    return existing.user_attrs, len(existing.get_trials(deepcopy=False))


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
