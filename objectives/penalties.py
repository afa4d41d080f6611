"""Explicit weight penalties added to the loss as ``loss + penalty()``.

They are separate from the optimizer's ``weight_decay`` (which is decoupled in AdamW and not a
gradient of any term in the loss), so that the search can choose either or both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PENALTIES", "Penalty", "build_penalty"]

PENALTIES: tuple[str, ...] = ("none", "l1", "l2", "l2_sp")


class Penalty:
    """``lam * term(params)``; call it to get a float32 scalar tensor differentiable w.r.t. the
    parameters. Holds references to the parameters (not copies), so it follows training.

    Uses ``torch._foreach_norm`` / ``torch._foreach_sub``, which fuse the per-tensor reductions
    into few kernel launches for models with hundreds of parameter tensors and support autograd
    (checked by the gradient tests in tests/objectives_tests/test_penalties.py).
    """

    def __init__(
        self,
        name: str,
        lam: float,
        *,
        params: Sequence[Tensor],
        reference: Sequence[Tensor] | None = None,
    ) -> None:
        if name not in PENALTIES:
            raise ValueError(f"unknown penalty {name!r}; known penalties: {', '.join(PENALTIES)}")
        lam = float(lam)
        if not (math.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
        all_params = list(params)
        for i, p in enumerate(all_params):
            if not isinstance(p, Tensor):
                raise ValueError(f"params[{i}] is not a tensor: {type(p).__name__}")
            if not p.is_floating_point():
                raise ValueError(f"params[{i}] must be floating point, got dtype {p.dtype}")

        refs: list[Tensor] | None = None
        if name == "l2_sp":
            if reference is None:
                raise ValueError("penalty 'l2_sp' requires reference (the pretrained values)")
            refs = list(reference)
            if len(refs) != len(all_params):
                raise ValueError(
                    f"reference has {len(refs)} tensors but params has {len(all_params)}; "
                    "they must match one to one"
                )
            for i, (p, r) in enumerate(zip(all_params, refs, strict=True)):
                if tuple(r.shape) != tuple(p.shape):
                    raise ValueError(
                        f"reference[{i}] has shape {tuple(r.shape)}, "
                        f"params[{i}] has {tuple(p.shape)}"
                    )
                if r.device != p.device:
                    raise ValueError(f"reference[{i}] is on {r.device}, params[{i}] on {p.device}")
            # float32 detached copies: later in-place updates of the caller's tensors must not
            # move the anchor, and bf16 params should not be compared to a re-rounded anchor.
            refs = [
                r.detach().to(torch.float32).clone()
                for p, r in zip(all_params, refs, strict=True)
                if p.requires_grad
            ]

        self.name = name
        self.lam = lam
        # Frozen parameters are dropped once here rather than filtered on every call.
        self.params: list[Tensor] = [p for p in all_params if p.requires_grad]
        self.reference: list[Tensor] | None = refs
        self._device = self.params[0].device if self.params else torch.device("cpu")

    @property
    def active(self) -> bool:
        """False when the penalty is identically zero, so the training loop can skip it."""
        return self.name != "none" and self.lam != 0.0 and bool(self.params)

    def _zero(self) -> Tensor:
        return torch.zeros((), dtype=torch.float32, device=self._device)

    def _sum(self, norms: Sequence[Tensor], *, square: bool) -> Tensor:
        # Norms of parameters on several devices are gathered onto the first one.
        stacked = torch.stack([n.to(self._device) for n in norms])
        return (stacked.square() if square else stacked).sum()

    def _norms(self, order: float) -> Sequence[Tensor]:
        # dtype=float32 upcasts bf16/fp16 inside the kernel (no copy); it refuses to narrow
        # float64, so those (rare) tensors are cast first.
        params = [p.float() if p.dtype == torch.float64 else p for p in self.params]
        return torch._foreach_norm(params, order, dtype=torch.float32)

    def __call__(self) -> Tensor:
        if self.name == "none" or not self.params:
            return self._zero()
        if self.name == "l1":
            term = self._sum(self._norms(1), square=False)
        elif self.name == "l2":
            # sum p^2 = sum_i ||p_i||^2; the norm's backward is defined as 0 at p_i = 0.
            term = self._sum(self._norms(2), square=True)
        else:  # l2_sp
            assert self.reference is not None
            # .float() is a no-op for float32 params, so no copy in the usual case.
            diffs = torch._foreach_sub([p.float() for p in self.params], self.reference)
            term = self._sum(torch._foreach_norm(diffs, 2), square=True)
        return self.lam * term

    def __repr__(self) -> str:
        return f"Penalty(name={self.name!r}, lam={self.lam}, num_tensors={len(self.params)})"


def build_penalty(
    name: str,
    lam: float,
    *,
    params: Sequence[Tensor],
    reference: Sequence[Tensor] | None = None,
) -> Penalty:
    """Build the penalty ``name`` scaled by ``lam``.

    - ``none``: 0.
    - ``l1``: ``lam * sum |p|``.
    - ``l2``: ``lam * sum p^2`` (squared L2 norm, no 1/2).
    - ``l2_sp``: ``lam * sum (p - p0)^2`` towards the pretrained values ``p0`` given in
      ``reference`` (same order and shapes as ``params``); Li, Grandvalet & Davoine 2018,
      "Explicit Inductive Bias for Transfer Learning with Convolutional Networks". Pass the
      backbone's parameters; the new head has no pretrained anchor.

    Only parameters with ``requires_grad`` contribute (their reference entries are dropped too).
    """
    return Penalty(name, lam, params=params, reference=reference)
