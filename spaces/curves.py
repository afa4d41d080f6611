"""`curves`: the image space over simulated training, to measure everything but the model.

Each trial's configuration maps, per seed, to a learning curve (objectives.curves: saturating,
late starters at low learning rates, divergence at high ones, a frozen backbone plateauing
early, loss families a point or two apart, noise); each epoch sleeps its simulated time times
`--time-scale` (0: no sleep). Everything else is the real stack: reports, pruning, MLflow runs
with curves and artifacts, checkpoints, retries, workers. For coordination benchmarks at many
workers and for choosing pruners over many seeds; not a claim about any data set.
"""

from __future__ import annotations

from typing import Any

from objectives.data import Task
from spaces.base import Study, TaskOptions
from spaces.vision import RECIPES, space

TIME_SCALE = 0.01  # a simulated 20-30 s GPU epoch sleeps 0.2-0.3 s


def load_task(options: TaskOptions) -> Task:
    from objectives.curves import load_task as simulated_task  # loads on use, as others do

    scale = TIME_SCALE if options.time_scale is None else options.time_scale
    return simulated_task(options.seed, time_scale=scale)


def train(*args: Any, **kwargs: Any) -> Any:
    """objectives.curves.simulate, imported on use."""
    from objectives.curves import simulate

    return simulate(*args, **kwargs)


STUDY = Study(
    name="curves",
    space=space,
    load_task=load_task,
    epochs=15,
    trials=40,
    description="simulated learning curves over the image space, no model trained: for "
                "benchmarks of workers, storages and pruners (--time-scale)",
    resolution=0,
    train=train,
    defaults={"weight_decay": 0.05, "batch_size": 128},
    recipes=RECIPES,
)
