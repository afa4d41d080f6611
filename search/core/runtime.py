"""What every command sets up in its own process: libraries quieted, the device chosen (and its
GPU share), the study's task loaded once. search.run's session, search.refit, search.report,
search.sync and the benchmarks share these."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import optuna

import spaces
from objectives.data import Task
from objectives.errors import InputError
from search.core.errors import UsageError

_TASKS: dict[tuple[Any, ...], Task] = {}


def quiet_libraries() -> None:
    # Our own one line per trial replaces Optuna's; failures are reported with their reason.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # MLflow draws a progress bar on stderr for every model it downloads (a teacher, a refit).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible: use --device cpu")
    return name


def visible_gpus() -> list[str]:
    """Indices of the GPUs this process may use (none on a CPU-only machine).

    `device_count` asks NVML where it can, without starting CUDA in this process, so that
    CUDA_VISIBLE_DEVICES may still be set afterwards (search.run pins a lone worker's GPU).
    """
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


# Set by a launcher for workers that share a GPU: the share of its memory each may take, so
# that a trial too large for its share fails in its own process, not in a neighbour's.
MEMORY_FRACTION_ENV = "FINETUNE_SEARCH_GPU_MEMORY_FRACTION"


def limit_gpu_memory(device: str) -> None:
    """Cap this process's share of its GPU's memory when a launcher asked for it."""
    share = os.environ.get(MEMORY_FRACTION_ENV)
    if device == "cuda" and share:
        import torch

        torch.cuda.set_per_process_memory_fraction(float(share))


def device_tags(device: str) -> dict[str, str]:
    """The device a trial trains on, and the GPU's name on CUDA, as MLflow tags."""
    tags = {"device": device}
    if device == "cuda":
        import torch

        tags["gpu"] = torch.cuda.get_device_name()
    return tags


def load_task(spec: spaces.Study, options: spaces.TaskOptions, device: str) -> Task:
    """The study's task with its data on `device`, loaded once per process."""
    key = (spec.name, options, device)
    if key not in _TASKS:
        try:
            _TASKS[key] = spec.task(options).to(device)
        except InputError as e:
            raise UsageError(str(e)) from None
    return _TASKS[key]
