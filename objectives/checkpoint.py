"""Atomic save and safe load of fine_tune's per-epoch checkpoints (plain PyTorch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from objectives.interrupts import interrupts_held

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a reader sees the old file or the new, never half.

    The bytes go to `<path>.tmp` in the same folder (so `os.replace` is a rename on one file
    system), are flushed to disk, then renamed over `path`. A fixed temporary name means a save
    killed half-way leaves at most one stale `.tmp`, which the next save overwrites. Ctrl-C and
    SIGTERM wait for the save to end: torch turned one landing in its write into a RuntimeError,
    and the checkpoint just written is the one the interrupted trial's retry resumes from.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with interrupts_held():
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())  # the rename must not reach the disk before the data
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _reason(error: Exception) -> str:
    text = str(error)
    # torch wraps a weights-only refusal in advice to retry with weights_only=False: wrong for
    # a corrupt or foreign file, so only the reason itself is kept.
    _, marker, rest = text.partition("WeightsUnpickler error:")
    if marker and rest.strip():
        text = rest.strip().splitlines()[0]
    return f"{type(error).__name__}: {text}"


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state saved at `path`, its tensors on the CPU; None when there is no such file.

    `weights_only=True`: only tensors and plain containers are unpickled, never arbitrary code.
    Anything unreadable (truncated, random bytes, not a dict) is a ValueError.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path} cannot be read: {_reason(error)}; "
                         "delete it to start the trial over") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} cannot be read: it holds a "
                         f"{type(state).__name__}, not a dict; delete it to start the trial over")
    return state
