"""Refitting a trial (python -m search.refit): its config trained again on train + validation,
tested once on the held-out test split and a shifted test set, and logged to one MLflow run
nested under the study's run."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from search.core import names
from search.core.errors import UsageError

if TYPE_CHECKING:
    from objectives.config import TrialConfig

# How a refit on train + validation trains the configuration chosen on train alone (more images):
# "same": its epochs and batch size (more steps an epoch, so more steps in all);
# "steps": its batch size and number of optimizer steps (fewer epochs; warmup as many steps);
# "batch": its epochs and steps an epoch (a batch as much larger as the data).
# The default is the one search.bench --only refit-rule found best, on held-out parts of the
# labelled pool: "same" beat "steps" by 2.2 points and "batch" by 1.0 on cifar10-transfer, by
# 4.7 and 4.0 on digits (docs/review.md, "The refit rule").
REFIT_RULES = ("same", "steps", "batch")
REFIT_RULE = "same"
RULE_TAG = "search.refit_rule"  # the refit run's tag: the rule it trained under


@dataclass(frozen=True)
class RefitRequest:
    """What a refit is asked: search.refit's options, one field each (see its --help)."""

    study: str
    name: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    trial: int | None = None
    device: str = "auto"
    data_dir: str | None = None
    weights: str | None = None
    register: str | None = None
    teacher: str | None = None
    teacher_arch: str | None = None
    per_family: str | bool | None = None  # True: the family the study balanced, else loss
    seeds: int | None = None
    refit_rule: str | None = None  # REFIT_RULES; None: REFIT_RULE

    def check(self) -> None:
        """Options that do not go together are a UsageError."""
        if self.per_family is not None and self.trial is not None:
            raise UsageError("--per-family refits each family's best trial: leave --trial out")
        if self.seeds is not None and self.per_family is None:
            raise UsageError("--seeds goes with --per-family")
        if self.refit_rule is not None and self.refit_rule not in REFIT_RULES:
            raise UsageError(f"--refit-rule must be one of {', '.join(REFIT_RULES)}, got "
                             f"{self.refit_rule!r}")
        if self.per_family is not None and self.register:
            raise UsageError("--register takes one model: refit the trial you chose without "
                             "--per-family")


@dataclass(frozen=True)
class Fitting:
    """What every fit of one refit shares: the Optuna study, its task (train + validation
    joined by each fit), the device, the stores, and the teacher of a trial that distils."""

    study: Any
    task: Any
    device: str
    stores: Any
    teacher: Any = None


def refit(request: RefitRequest) -> dict[str, Any]:
    import optuna

    from search.core.runtime import load_task, pick_device, quiet_libraries
    from search.core.urls import mask_url
    from search.storage import stores as stores_module
    from search.storage.optuna_storage import open_storage
    from search.study import lookup as studies
    from search.study.settings import StudySettings

    request.check()
    quiet_libraries()
    stores = stores_module.resolve(storage=request.storage, tracking_uri=request.tracking_uri)
    stores_module.check_tracking_store(stores.tracking_uri)  # not minutes of retries
    spec = studies.find(request.study, storage=stores.storage, name=request.name)
    if spec.simulated:
        raise UsageError(f"study {spec.name!r} simulates its training: it has no model to refit "
                         "or test; compare its trials with python -m search.report")
    name = request.name or spec.name
    try:
        found = optuna.load_study(study_name=name, storage=open_storage(stores.storage))
    except KeyError:
        raise UsageError(f"no study {name!r} in {mask_url(stores.storage)}: run python -m "
                         f"search.run --study {request.study} first") from None
    chosen = None if request.per_family is not None else _pick(found, request.trial)
    fixed = StudySettings.from_attrs(found.user_attrs, spec)
    settings = fixed.trial_settings()
    if fixed.init == "file" and request.weights is None:
        raise UsageError(f"study {name!r} was started with --weights PATH: give it again")
    options = fixed.task_options(spec, cache_dir=stores.cache_dir,
                                 data_dir=request.data_dir or None, weights=request.weights)
    device = pick_device(request.device)
    rule = request.refit_rule or REFIT_RULE
    if request.per_family is not None:
        from search.review import family_refit

        by = (request.per_family if isinstance(request.per_family, str)
              else found.user_attrs.get("balance"))
        plan = family_refit.plan(found, spec, by=by or "loss", seeds=request.seeds or 3)
        task = load_task(spec, options, "cpu")
        distils = [t for t in plan.trials.values()
                   if config_of(spec, t, settings).loss == "distill"]
        teacher = _teacher(request.teacher or fixed.teacher,
                           request.teacher_arch or fixed.teacher_arch, distils[0], task, stores,
                           settings) if distils else None
        fitting = Fitting(found, task, device, stores, teacher)
        return family_refit.run(plan, lambda t, seed, tags: _train_and_log(
            fitting, t, _under(rule, dataclasses.replace(config_of(spec, t, settings),
                                                         seed=seed), task),
            run_name=f"refit-{tags['search.family']}-seed{seed}",
            tags={**tags, RULE_TAG: rule}, log_model=False),
            found, base_seed=settings.seed, stores=stores)
    task = load_task(spec, options, "cpu")
    searched = config_of(spec, chosen, settings)
    config = _under(rule, searched, task)
    teacher = None
    if config.loss == "distill":  # the study's teacher, unless another one is given
        teacher = _teacher(request.teacher or fixed.teacher,
                           request.teacher_arch or fixed.teacher_arch, chosen, task, stores,
                           settings)
    trained = regime(searched, len(task.data.train))
    refitted = regime(config, len(task.data.train) + len(task.data.val))
    result = _train_and_log(Fitting(found, task, device, stores, teacher), chosen, config,
                            register=request.register,
                            tags={RULE_TAG: rule, "search.refit_regime": f"{trained} -> "
                                                                         f"{refitted}"})
    return {**result, "refit_rule": rule, "trained": trained, "refitted": refitted}


def _under(rule: str, config: TrialConfig, task: Any) -> TrialConfig:
    """`config` as it refits under `rule` on `task`'s train + validation, having been chosen
    training on its train split."""
    train = len(task.data.train)
    return refit_config(config, rule, trained_on=train, refit_on=train + len(task.data.val))

def config_of(spec: Any, trial: Any, settings: Any) -> Any:
    """The trial's TrialConfig, rebuilt from its parameters by the study's space."""
    import optuna

    return spec.space(cast(optuna.Trial, optuna.trial.FixedTrial(trial.params)), settings)

def refit_config(config: TrialConfig, rule: str, *, trained_on: int,
                 refit_on: int) -> TrialConfig:
    """`config`, chosen training on `trained_on` images, as it trains on `refit_on` images under
    refit `rule` (REFIT_RULES; steps an epoch as objectives.train counts them)."""
    from search.study.batches import steps_per_epoch

    if rule not in REFIT_RULES:
        raise ValueError(f"refit rule must be one of {', '.join(REFIT_RULES)}, got {rule!r}")
    per_epoch = steps_per_epoch(trained_on, config.batch_size)
    if rule == "steps":  # as many steps in all, and of warmup: fewer epochs
        more = steps_per_epoch(refit_on, config.batch_size)
        return config.replace(epochs=max(1, round(config.epochs * per_epoch / more)),
                              warmup_epochs=config.warmup_epochs * per_epoch / more)
    if rule == "batch":  # as many steps an epoch: a larger batch
        return config.replace(batch_size=max(config.batch_size,
                                             math.ceil(refit_on / per_epoch)))
    return config


def regime(config: TrialConfig, images: int) -> str:
    """How `config` trains on `images` images, in words: "15 epochs of batch 64, 8 steps
    each"."""
    from search.study.batches import steps_per_epoch

    return (f"{config.epochs} epochs of batch {config.batch_size}, "
            f"{steps_per_epoch(images, config.batch_size)} steps each")


def _teacher(teacher: str | None, arch: str | None, chosen: Any, task: Any, stores: Any,
             settings: Any) -> Any:
    """The study's teacher (or the one given), for a trial that distils."""
    from search.study import teacher as teacher_module

    if not teacher or "***" in teacher:
        raise UsageError(f"trial {chosen.number} distils from a teacher: give --teacher "
                         "(and --teacher-arch) as given to search.run")
    return teacher_module.load(teacher, arch=arch, task=task, tracking_uri=stores.client_uri,
                               resolution=settings.resolution or 0)

def _race_pick(study: Any) -> int | None:
    """The trial of the race's pick, if the study's race decided one."""
    race = study.user_attrs.get(names.RACE) or {}
    pick = race.get("pick")
    return next((int(e["trial"]) for e in race.get("finalists", []) if e["label"] == pick),
                None)


def _pick(study: Any, number: int | None) -> Any:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if number is None:  # the race's pick, when the search ended with one: else the best
        number = _race_pick(study)
    if number is None:
        if not complete:
            raise UsageError(f"study {study.study_name!r} has no completed trial to refit")
        from search.study.display import best_trial

        return best_trial(study)
    chosen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if chosen is None or not chosen.params:
        raise UsageError(f"study {study.study_name!r} has no trial {number} with parameters")
    return chosen

def _train_and_log(fitting: Fitting, chosen: Any, config: Any, *, register: str | None = None,
                   run_name: str | None = None, tags: dict[str, str] | None = None,
                   log_model: bool = True) -> dict[str, Any]:
    from objectives.train import fine_tune
    from search.tracking.models import RefitRun

    study, device, stores = fitting.study, fitting.device, fitting.stores
    data = fitting.task.data
    fit_task = refit_task(fitting.task, device)

    run = RefitRun(stores.client_uri, experiment=study.study_name,
                   artifact_location=stores.artifact_location,
                   run_name=run_name or f"refit-trial-{chosen.number}",
                   tags={**_run_tags(study, chosen, device), **(tags or {})},
                   params=config.to_dict())
    status = "FAILED"
    try:
        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            run.log_metrics({k: v for k, v in metrics.items()
                             if k in ("train_loss", "lr", "epoch_seconds")}, step=epoch)

        try:
            model = fine_tune(config, fit_task, device=device, on_epoch=on_epoch,
                              teacher=fitting.teacher).model
        except RuntimeError as e:
            _device_failed(e)
            raise
        metrics = evaluate(model, fit_task, resolution=config.resolution)
        run.log_metrics(metrics)
        model_uri = (_log_model(run, model, data, config.resolution, register) if log_model
                     else None)
        status = "FINISHED"
    finally:
        run.end(status)
    return {"trial": chosen.number, "run_id": run.run_id, "metrics": metrics,
            "model_uri": model_uri}

def refit_task(task: Any, device: str) -> Any:
    """`task` with train + validation to train on, on `device` (the test split stays put)."""
    import torch

    from objectives.data import Split, Task

    data = task.data
    both = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    fit_data = dataclasses.replace(data, train=both)  # val stays: an in-sample curve only
    # Train and val go to the device once, as a search's task does.
    return Task(f"{task.name}-refit", fit_data, task.make_model).to(device)

def _device_failed(error: RuntimeError) -> None:
    """A sticky CUDA error is one line (and exit status 3), as in search.run."""
    from objectives.failures import cuda_broken
    from search.core.errors import DeviceFailed

    broken = cuda_broken(error)
    if broken is not None:
        line = str(broken).strip().splitlines()[0]
        raise DeviceFailed(f"CUDA error, the GPU's context is broken: {line}; the refit run "
                           "is ended FAILED: run the same command again") from None

def _run_tags(study: Any, chosen: Any, device: str) -> dict[str, str]:
    """The refit run's MLflow tags: its trial, study and parent run, and the device (with the
    GPU's name on CUDA) and library versions, as a trial's run has them."""
    from search.core.runtime import device_tags
    from search.tracking import versions

    tags = {"search.role": "refit", "search.refit_of_trial": str(chosen.number),
            "optuna.study_name": study.study_name, **device_tags(device), **versions()}
    if chosen.user_attrs.get(names.MLFLOW_RUN_ID):
        tags["search.refit_of_run"] = chosen.user_attrs[names.MLFLOW_RUN_ID]
    if study.user_attrs.get(names.MLFLOW_PARENT_RUN_ID):
        tags["mlflow.parentRunId"] = study.user_attrs[names.MLFLOW_PARENT_RUN_ID]
    return tags

def evaluate(model: Any, task: Any, *, resolution: int) -> dict[str, float]:
    """Test metrics, and accuracy under each corruption (per severity, per corruption, mean)."""
    from objectives.corruptions import CORRUPTIONS, SEVERITIES, corrupt
    from objectives.data import Split
    from objectives.metrics import classification_metrics, per_class_recall
    from objectives.train import predict

    # The images go to the model's device once, and are corrupted there: predict would
    # otherwise copy every batch from the host, and wait for it. Labels stay with the logits,
    # which predict returns on the CPU.
    device = next(model.parameters()).device
    test = Split(task.data.test.x.to(device), task.data.test.y)
    logits = predict(model, test, task, resolution=resolution)
    metrics = {k.replace("val_", "test_", 1): v
               for k, v in classification_metrics(logits, test.y).items()}
    for name, recall in zip(task.data.class_names, per_class_recall(
            logits, test.y, task.data.num_classes), strict=True):
        metrics[f"test_recall/{name}"] = recall
    means = []
    for corruption in CORRUPTIONS:
        accuracies = []
        for severity in SEVERITIES:
            shifted = Split(corrupt(test.x, corruption, severity, seed=severity), test.y)
            predicted = predict(model, shifted, task, resolution=resolution).argmax(dim=1)
            accuracies.append(float((predicted == test.y).float().mean()))
            metrics[f"corrupt/{corruption}/{severity}"] = accuracies[-1]
        metrics[f"corrupt/{corruption}"] = statistics.fmean(accuracies)
        means.append(metrics[f"corrupt/{corruption}"])
    metrics["test_corruption_accuracy"] = statistics.fmean(means)
    return metrics

def _log_model(run: Any, model: Any, data: Any, resolution: int, register: str | None) -> str:
    """The model as it serves (uint8 images in, logits out), logged in the refit's run."""
    from objectives.serving import ImageClassifier

    served = ImageClassifier(model.cpu().eval(), data, resolution=resolution).eval()
    example = data.train.x[:4].numpy()  # stored with the model: not from the test split
    return str(run.log_model(served, example, register=register))
