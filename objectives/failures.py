"""What a failed training run means for the process that ran it (plain PyTorch).

Three kinds of failure need more than "this trial failed":
- out of memory, whether raised as `torch.OutOfMemoryError` or wrapped by torch.compile's
  backend (`BackendCompilerFailed`, `InductorError`): the memory must be freed at once, and the
  trial may have failed only because a neighbour on the same GPU held the memory;
- a sticky CUDA error (a device-side assert, an illegal memory access): the process's CUDA
  context is broken, and every later kernel in it fails too, so the process must end;
- anything else: an ordinary failure of that trial.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Iterator

import torch

__all__ = ["cuda_broken", "free_after", "out_of_memory", "release_memory"]

# CUDA errors after which the context cannot be used again (the CUDA runtime documents these
# as "sticky": cudaErrorAssert, cudaErrorIllegalAddress, cudaErrorLaunchFailure,
# cudaErrorIllegalInstruction, cudaErrorMisalignedAddress, cudaErrorInvalidPc, ...). PyTorch
# raises them as torch.AcceleratorError (2.8+) or RuntimeError with the runtime's message.
_STICKY = (
    "device-side assert triggered",
    "an illegal memory access was encountered",
    "an illegal instruction was encountered",
    "unspecified launch failure",
    "misaligned address",
    "invalid program counter",
    "uncorrectable ecc error",
    "cuda error: unknown error",
)
_OOM = ("cuda out of memory", "out of memory. tried to allocate", "cudaerrormemoryallocation")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, what it wraps (`inner_exception` of torch.compile's errors), its causes."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (getattr(e, "inner_exception", None), e.__cause__,
                                e.__context__) if isinstance(x, BaseException))


def out_of_memory(error: BaseException) -> BaseException | None:
    """The out-of-memory error `error` is or wraps (through torch.compile), else None."""
    chain = list(_chain(error))
    typed = [e for e in chain if isinstance(e, torch.OutOfMemoryError)]
    if typed:
        return typed[0]
    return next((e for e in chain if isinstance(e, RuntimeError)
                 and any(s in str(e).lower() for s in _OOM)), None)


def cuda_broken(error: BaseException) -> BaseException | None:
    """The sticky CUDA error `error` is or wraps, else None: after it, this process's CUDA
    context is unusable (every later CUDA call fails), so the process must end."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    for e in _chain(error):
        text = str(e).lower()
        if isinstance(e, accelerator_error) or (isinstance(e, RuntimeError) and "cuda" in text):
            if any(s in text for s in _STICKY):
                return e
    return None


def free_after(error: BaseException) -> None:
    """Drop what `error`'s traceback keeps alive: the frames of the failed run (its model,
    gradients, optimizer state, L2-SP anchor, batches), for `error` and what it wraps.

    Without this, an exception kept by its catcher (Optuna's trial loop holds the last one,
    in a reference cycle through its own frame) keeps those frames until the cyclic garbage
    collector happens to run; with several pruned trials per GPU their memory piles up.
    Clearing the frames' locals is not enough: a cleared frame still holds its function, and a
    closure (torch's module call with hooks) holds the module. So the traceback goes too;
    format it first if it is wanted (search records a failed trial's as an artifact).
    """
    for e in _chain(error):
        traceback.clear_frames(e.__traceback__)
        e.__traceback__ = None


def release_memory() -> None:
    """Collect garbage and hand the CUDA cache back, so a neighbour on the GPU can use it."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
