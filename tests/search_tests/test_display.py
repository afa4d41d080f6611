"""The display's cells for the loss and its parameters, pinned."""

from __future__ import annotations

from typing import Any

import pytest

from search.study.display import describe_params, key_columns


@pytest.mark.parametrize(("params", "cells"), [
    ({"loss": "cross_entropy"}, {"loss": "cross_entropy"}),
    ({"loss": "label_smoothing", "label_smoothing": 0.2}, {"loss": "label_smoothing(eps=0.2)"}),
    ({"loss": "focal", "focal_gamma": 3.5}, {"loss": "focal(gamma=3.5)"}),
    ({"loss": "huber", "huber_delta": 0.0005}, {"loss": "huber(delta=5.0e-04)"}),
    ({"loss": "kl", "kl_smoothing": 0.15}, {"loss": "kl(eps=0.15)"}),
    ({"loss": "distill", "distill_temperature": 3.0, "distill_alpha": 0.4,
      "distill_base": "focal", "focal_gamma": 2.0},
     {"loss": "distill(gamma=2)", "distill_temperature": "3", "distill_alpha": "0.4",
      "distill_base": "focal"}),
])
def test_a_loss_and_its_parameters_share_a_cell(params: dict[str, Any],
                                                cells: dict[str, str]) -> None:
    assert key_columns(params) == cells


def test_describe_params() -> None:
    params = {"loss": "huber", "huber_delta": 0.05, "penalty": "l2", "penalty_lambda": 1e-4,
              "optimizer": "momentum", "momentum": 0.9, "nesterov": True, "lr": 0.01,
              "lr_decay": 0.8, "freeze_depth": 2, "batch_size": 64}
    assert describe_params(params) == ("loss=huber(delta=0.05) penalty=l2 1.0e-04 "
                                       "optimizer=momentum(0.9, nesterov) lr=0.01 freeze=2 "
                                       "batch=64 lr_decay=0.8")
