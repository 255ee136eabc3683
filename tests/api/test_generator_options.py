"""The generator-training options are declared once (``GeneratorConfig``): the REST
body, the CLI and the admin UI form offer exactly its fields, defaults and bounds."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgspec
import pytest
import typer.main

from api.cli_generators import generator_app
from api.dto import TrainGeneratorIn
from api.ui.views import generator_config_values, generator_form
from generator.fit.config import FinetuneConfig, GeneratorConfig, Option, options
from registry.errors import InvalidInput

REQUEST_ONLY = {"base_model", "name"}  # where and under which name, not how


def _constraints(annotation: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """msgspec Meta bounds and Literal choices of a DTO field's annotation."""
    bounds: dict[str, Any] = {}
    choices: tuple[str, ...] = ()
    for arg in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(arg) is typing.Annotated:
            for meta in arg.__metadata__:
                if isinstance(meta, msgspec.Meta):
                    for key in ("ge", "gt", "le", "lt"):
                        if getattr(meta, key) is not None:
                            bounds[key] = getattr(meta, key)
        if typing.get_origin(arg) is typing.Literal:
            choices = typing.get_args(arg)
    return bounds, choices


def _expected(opt: Option) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if opt.low is not None:
        out["gt" if opt.low_open else "ge"] = opt.low
    if opt.high is not None:
        out["lt" if opt.high_open else "le"] = opt.high
    return out


def test_the_rest_body_has_every_option_with_its_default_and_bounds() -> None:
    hints = typing.get_type_hints(TrainGeneratorIn, include_extras=True)
    fields = set(TrainGeneratorIn.__struct_fields__) - REQUEST_ONLY
    assert fields == {f.name for f, _ in options()}
    defaults = dict(zip(TrainGeneratorIn.__struct_fields__, _defaults(), strict=True))
    for f, opt in options():
        assert defaults[f.name] == f.default, f.name
        bounds, choices = _constraints(hints[f.name])
        if opt.choices:
            assert set(choices) == set(opt.choices), f.name
        else:
            assert bounds == _expected(opt), f.name


def _defaults() -> list[Any]:
    empty = TrainGeneratorIn()
    return [getattr(empty, name) for name in TrainGeneratorIn.__struct_fields__]


@pytest.mark.parametrize(
    ("name", "config"), [("train", GeneratorConfig), ("finetune", FinetuneConfig)]
)
def test_the_cli_has_every_option_with_its_default(name: str, config: type) -> None:
    # typer types get_command as a plain Command; an app with subcommands returns a group
    command = typer.main.get_command(generator_app).commands[name]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    for f, opt in options(config):
        assert f.name in params, f.name
        assert params[f.name].default == f.default, f.name
        assert f"--{f.name.replace('_', '-')}" in params[f.name].opts
        assert params[f.name].help == opt.help


def test_the_ui_form_is_built_from_the_options() -> None:
    form = generator_form()
    assert [x.name for x in form] == [f.name for f, _ in options()]
    typed = generator_config_values({"steps": "12", "tau": "0.5", "select": "task", "k": ""})
    assert typed == {"steps": 12, "tau": 0.5, "select": "task"}  # blank: the default
    with pytest.raises(InvalidInput, match="steps must be a whole number"):
        generator_config_values({"steps": "many"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"tau": 0}, "tau must be positive"),
        ({"tau": float("nan")}, "tau must be a number"),
        ({"gate": -0.1}, "gate must be non-negative"),
        ({"val_fraction": 1.0}, "val_fraction must be below 1"),
        ({"method": "magic"}, "method must be one of sg-lora, icm-lora"),
        ({"select": "local"}, "select must be one of weights, task"),
        ({"anchor_steps": 5}, "unknown generator settings anchor_steps"),
    ],
)
def test_bad_options_name_the_field(params: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        GeneratorConfig.from_params(params)


def test_a_config_round_trips_through_job_parameters() -> None:
    config = GeneratorConfig(steps=12, k=2, tau=0.5, gate=0.1, select="task")
    assert GeneratorConfig.from_params(config.to_params()) == config
    assert dataclasses.asdict(config) == config.to_params()
