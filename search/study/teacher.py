"""The teacher of a distilling study (`--teacher`), loaded and checked before any trial starts.

An MLflow model URI (`runs:/RUN_ID/model`, `models:/NAME/VERSION`, what `search.refit` logs)
loads with `mlflow.pytorch`; a local file is a state dict with its architecture
(`--teacher-arch`, see objectives.teacher). Every failure is one line (a UsageError): a missing
or unloadable teacher, or one that predicts another number of classes than the study has.
"""

from __future__ import annotations

from typing import Any

from objectives.data import Task
from objectives.errors import InputError
from search.core.errors import UsageError
from search.core.urls import mask_text, mask_url

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(teacher: str) -> bool:
    return teacher.startswith(MLFLOW_SCHEMES)


def load(teacher: str, *, arch: str | None, task: Task, tracking_uri: str,
         resolution: int = 0) -> Any:
    """The teacher as a module taking uint8 images, on the CPU in eval mode; checked."""
    from objectives.teacher import load_teacher, teacher_classes

    shown = mask_url(teacher)
    if is_mlflow_uri(teacher):
        if arch is not None:
            raise UsageError("--teacher-arch is for a state dict file; an MLflow model brings "
                             "its own architecture: leave it out")
        model = _load_mlflow(teacher, tracking_uri)
    else:
        if arch is None:
            raise UsageError(f"--teacher {shown} is a file: say which model it is with "
                             "--teacher-arch NAME (study, resnet18, resnet50, timm:NAME, ...)")
        try:
            model = load_teacher(teacher, arch=arch, task=task, resolution=resolution)
        except InputError as e:
            raise UsageError(str(e)) from None
    try:
        classes = teacher_classes(model, task)
    except Exception as e:  # noqa: BLE001 - a model that cannot take the study's images
        raise UsageError(f"teacher {shown} cannot classify the study's images "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    if classes != task.data.num_classes:
        raise UsageError(f"teacher {shown} predicts {classes} classes; the study's data has "
                         f"{task.data.num_classes}: give a teacher trained on the same classes")
    return model


def _load_mlflow(uri: str, tracking_uri: str) -> Any:
    from search.tracking.models import load_model

    try:
        model = load_model(uri, tracking_uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds; all mean "cannot load"
        reason = mask_text(_first_line(e), tracking_uri)
        raise UsageError(f"cannot load teacher {mask_url(uri)} from "
                         f"{mask_url(tracking_uri)} ({type(e).__name__}: {reason}): give "
                         "the model URI search.refit printed, or a state dict file with "
                         "--teacher-arch") from None
    try:
        return model.cpu().eval()
    except NotImplementedError:  # a torch.export graph: it cannot change mode (already eval)
        from objectives.teacher import ExportedTeacher

        return ExportedTeacher(model)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
