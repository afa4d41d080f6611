"""What several test modules build: a tiny learnable image task, a quick trial config, and the
check of a command's one-line error. Tests import these from here, not from each other."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from objectives.config import TrialConfig
from objectives.data import ImageData, Split, Task, channel_stats
from objectives.models import StagedNet, new_head, small_cnn

NUM_CLASSES = 4  # of the quadrants task


def quadrants(n: int, seed: int) -> Split:
    """Noisy 8x8 images; the class decides which 4x4 quadrant is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % NUM_CLASSES
    x = torch.randint(0, 80, (n, 1, 8, 8), generator=g)
    for q in range(NUM_CLASSES):
        r, c = divmod(q, 2)
        x[y == q, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 170
    return Split(x.to(torch.uint8), y)


def quadrants_model(seed: int) -> StagedNet:
    # The "pretrained" backbone is the same for every seed; only the head depends on it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = small_cnn(NUM_CLASSES, width=8)
    new_head(model, NUM_CLASSES, seed=seed)
    return model


def quadrants_task(*, crop_padding: int = 1, flip: bool = False) -> Task:
    """240 training, 80 validation and 80 test images of the quadrants, a small CNN."""
    train, val, test = quadrants(240, 1), quadrants(80, 2), quadrants(80, 3)
    mean, std = channel_stats(train.x)
    data = ImageData(train, val, test, ("tl", "tr", "bl", "br"), mean, std,
                     crop_padding=crop_padding, flip=flip)
    return Task("quadrants", data, quadrants_model)


def train_config(**changes: object) -> TrialConfig:
    """One quick epoch of AdamW; `changes` replace fields."""
    base = TrialConfig(optimizer="adamw", lr=1e-2, batch_size=32, epochs=1, warmup_epochs=0.5)
    return base.replace(**changes)


def one_error_line(err: str, prog: str = "search.run") -> str:
    """The one line a command printed on stderr for bad input (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


class Untouchable:
    """A test split that fails any use: a search must never look at the test split."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the search touched the test split ({name})")

    def __len__(self) -> int:
        raise AssertionError("the search touched the test split (len)")


def with_test(task: Task, test: Any) -> Task:
    """`task` with its test split replaced (by an Untouchable, or the real one back)."""
    return dataclasses.replace(task, data=dataclasses.replace(task.data, test=test))


def dynamo_config(**options: Any) -> Any:
    """A context in which Dynamo's config holds `options`, and after which it holds what it had.

    Not `monkeypatch.setattr(torch._dynamo.config, ...)`: torch's config modules serve their
    entries through `__getattr__`, and pytest 9 undoes a setattr on a module by restoring its
    `__dict__`, which deletes the entry; every later `torch.compile` in the process then fails
    with "recompile_limit does not exist". torch's own `config.patch` puts the value back.
    """
    import torch._dynamo

    return torch._dynamo.config.patch(**options)

