"""`torch.compile` for trials: compiled trials stay compiled, and a fallback is never silent.

Dynamo keeps at most `recompile_limit` (8) graphs per function; past it, the function runs
eagerly for the rest of the process, with one log line. A search worker runs many trials, and
each new batch size, resolution, freeze depth (which parameters need gradients) and train/eval
mode is a graph of its own, so after a few configurations every later trial would quietly run
eagerly. Here:
- shapes are fixed (`dynamic=False`; fine_tune drops the short last training batch and pads
  the last evaluation batch), so one configuration needs two graphs (train, eval);
- graphs are kept across trials (a new model of the same architecture and configuration
  reuses them: Dynamo lifts the parameters as inputs), and when the limit is reached Dynamo is
  reset once and the configuration compiled afresh;
- a run that still cannot stay compiled runs eagerly from there on, with a warning, and says
  so in `status` ("fallback: ..."), which the search records on the trial.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["BACKEND", "COMPILED", "CompiledModel"]

BACKEND: Any = "inductor"  # torch.compile's backend; tests use "eager" or a counting one

COMPILED = "compiled"


def _limit_error() -> type[BaseException] | None:
    import torch._dynamo.exc as exc

    return getattr(exc, "FailOnRecompileLimitHit", None)


class CompiledModel(nn.Module):
    """`model` under torch.compile, for one run; the same module otherwise (train/eval,
    parameters and state dict are the wrapped model's)."""

    _compiled: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # Kept out of the module tree: the compiled wrapper shares `model`'s parameters.
        self.__dict__["_compiled"] = torch.compile(model, backend=BACKEND, dynamic=False)
        self.status = COMPILED
        self._reset = False  # Dynamo was reset for this run already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.status != COMPILED:
            return self.model(x)
        limit = _limit_error()
        if limit is None:  # a PyTorch without the switch: compiled, unchecked
            return self._compiled(x)
        try:
            # Raise instead of quietly running eagerly; raised before anything runs.
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return self._compiled(x)
        except limit:
            if not self._reset:
                # Other configurations' graphs filled the cache: drop them, compile this one.
                self._reset = True
                torch._dynamo.reset()
                return self.forward(x)
            self.status = (f"fallback: more than {torch._dynamo.config.recompile_limit} "
                           "graphs in one run; running eagerly")
            warnings.warn(f"torch.compile {self.status}", RuntimeWarning, stacklevel=2)
            return self.model(x)
