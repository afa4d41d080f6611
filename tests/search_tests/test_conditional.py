"""The config fields logged only when sampled, pinned (the losses' from their declarations)."""

from __future__ import annotations

from search.execution.trial import CONDITIONAL


def test_the_conditional_fields() -> None:
    assert CONDITIONAL == {"label_smoothing", "focal_gamma", "huber_delta", "kl_smoothing",
                           "penalty_lambda", "momentum", "nesterov", "distill_alpha",
                           "distill_temperature", "distill_base"}
