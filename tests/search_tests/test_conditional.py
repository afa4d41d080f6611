"""The config fields logged only when sampled, pinned (the losses' from their declarations)."""

from __future__ import annotations

from search.execution.trial import CONDITIONAL


def test_the_conditional_fields() -> None:
    from objectives.losses import LOSS_PARAMS

    declared = {p.field for params in LOSS_PARAMS.values() for p in params}
    assert {"focal_gamma", "distill_alpha"} <= declared
    assert CONDITIONAL == {*declared, "penalty_lambda", "momentum", "nesterov", "distill_base"}
