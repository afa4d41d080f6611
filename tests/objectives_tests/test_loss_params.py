"""Each loss's declared parameters (objectives.losses.LossParam) agree with TrialConfig and with
the loss's constructor; a declaration without its TrialConfig field fails at import."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from objectives.config import TrialConfig, _check_loss_fields
from objectives.losses import ALL_LOSSES, LOSS_PARAMS, LossParam, build_loss

FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}
DECLARED = [(name, p) for name, params in LOSS_PARAMS.items() for p in params]


def _float_options(name: str) -> dict[str, float]:
    """The constructor's keyword options with a float default (distill's `base` is not one)."""
    found = inspect.signature(ALL_LOSSES[name]).parameters.values()
    return {o.name: o.default for o in found
            if o.kind is inspect.Parameter.KEYWORD_ONLY and isinstance(o.default, float)}


@pytest.mark.parametrize(("name", "param"), DECLARED, ids=[p.field for _, p in DECLARED])
def test_a_declared_parameter_has_its_field_and_its_range_fits(name: str,
                                                               param: LossParam) -> None:
    field = FIELDS[param.field]
    assert field.type == "float" and isinstance(field.default, float)
    assert field.default == _float_options(name)[param.arg]  # the config's default is the loss's
    assert param.low < param.high and (param.low > 0 or not param.log)
    assert param.low <= field.default <= param.high
    for value in (param.low, param.high):
        build_loss(name, **{param.arg: value})  # the whole range is valid for the loss


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_every_option_of_a_loss_is_declared_once(name: str) -> None:
    args = [p.arg for p in LOSS_PARAMS[name]]
    assert sorted(args) == sorted(_float_options(name))


def test_no_two_losses_share_a_field() -> None:
    # A field is an Optuna parameter: two losses sharing one would share its distribution.
    fields = [p.field for _, p in DECLARED]
    assert len(fields) == len(set(fields))


def test_loss_params_pinned() -> None:
    config = TrialConfig(label_smoothing=0.2, focal_gamma=3.5, huber_delta=0.05,
                         kl_smoothing=0.15, distill_alpha=0.3, distill_temperature=2.5)
    expected = {"label_smoothing": {"epsilon": 0.2}, "focal": {"gamma": 3.5},
                "huber": {"delta": 0.05}, "kl": {"epsilon": 0.15},
                "distill": {"alpha": 0.3, "temperature": 2.5}}
    for name, params in expected.items():  # the shipped losses' fields and arguments stay
        assert config.loss_params(name) == params
        assert config.replace(loss=name).loss_params() == params
    assert config.loss_params("nope") == {}


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_a_loss_gets_its_declared_fields_and_no_other(name: str) -> None:
    # A value of its own for every declared field, none of them a default: each loss must read
    # exactly its own fields, under its constructor's argument names.
    values = {p.field: p.low + (p.high - p.low) * (i + 1) / (len(DECLARED) + 2)
              for i, (_, p) in enumerate(DECLARED)}
    assert all(v != FIELDS[f].default for f, v in values.items())
    config = TrialConfig(**values)
    expected = {p.arg: values[p.field] for p in LOSS_PARAMS[name]}
    assert config.loss_params(name) == expected
    assert config.replace(loss=name).loss_params() == expected


@pytest.mark.parametrize("field", ["no_such_field", "loss", "batch_size"])
def test_a_parameter_without_a_float_field_is_refused(field: str) -> None:
    with pytest.raises(TypeError, match=f"'new' declares parameter '{field}'.*TrialConfig"):
        _check_loss_fields({"new": (LossParam(field, "x", 0.1, 1.0),)})
    _check_loss_fields(LOSS_PARAMS)
