"""A teacher for the `distill` loss from a local state dict (MLflow models: see
search.study.teacher).

The teacher is wrapped as an `ImageClassifier`: uint8 images in, logits out, with its own
normalization and resolution inside, which is the contract `fine_tune` expects of a teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from objectives.backbones import (
    BACKBONES,
    build_backbone,
    check_backbone,
    read_state_dict,
    whole_model,
)
from objectives.data import Task
from objectives.errors import InputError, one_line
from objectives.serving import ImageClassifier
from objectives.timm_backbones import TIMM_PREFIX

STUDY_ARCH = "study"  # --teacher-arch study: the study's own model (a trial's model/state_dict.pt)
TEACHER_ARCHS: tuple[str, ...] = (STUDY_ARCH, *BACKBONES)


def load_teacher(path: str | Path, *, arch: str, task: Task, resolution: int = 0) -> nn.Module:
    """The model of `arch` with the state dict in `path`, wrapped to take uint8 images.

    The state dict is either this tool's (a trial's `model/state_dict.pt`: the study's model
    or a backbone as the image studies build it) or torchvision's (timm's, for `timm:NAME`) own
    model of `arch` with a head of the task's classes.
    """
    if arch.startswith(TIMM_PREFIX):
        check_backbone(arch)  # timm installed, and knowing the model
    elif arch not in TEACHER_ARCHS:
        raise InputError(f"unknown --teacher-arch {arch!r}; known: {', '.join(TEACHER_ARCHS)}, "
                         "or timm:NAME")
    path = Path(path).expanduser()
    state = read_state_dict(
        path, what="teacher file",
        missing="give a state dict file saved with torch.save, or an MLflow model URI "
                "(runs:/RUN_ID/model, models:/NAME/VERSION)")
    classes = task.data.num_classes
    candidates = [task.make_model(0)] if arch == STUDY_ARCH else [
        build_backbone(arch, classes, state=None, seed=0),
        whole_model(arch, classes),
    ]
    error: Exception | None = None
    for model in candidates:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            error = error or e
            continue
        return ImageClassifier(model, task.data, resolution=resolution).eval()
    assert error is not None
    described = "the study's model" if arch == STUDY_ARCH else arch
    raise InputError(
        f"teacher file {path} does not fit {described} with {classes} classes "
        f"({one_line(error)}): give the --teacher-arch it was trained as, with a head of "
        f"{classes} classes"
    )


class ExportedTeacher(nn.Module):
    """A teacher saved as a `torch.export` graph (MLflow's default "pt2" model format).

    Such a graph was traced in eval mode, and its own train()/eval() raise, so a mode change
    stops here. It runs where it was traced (the CPU, for what MLflow logs): a GPU search
    should use a teacher saved as a module (search.refit logs one) or a state dict.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> ExportedTeacher:
        self.training = False
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.graph(images)


def teacher_classes(teacher: nn.Module, task: Task) -> int:
    """How many classes `teacher` predicts, from one validation image (CPU, no gradient)."""
    with torch.inference_mode():
        return int(teacher.eval()(task.data.val.x[:1].cpu()).shape[-1])
