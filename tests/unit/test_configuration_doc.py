"""docs/configuration.md lists every key of node.yaml and parties.yaml and every environment variable."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import click
from pydantic import BaseModel

from exchange.cli import main
from exchange.config import NodeConfig
from exchange.policy.model import Community, Party

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")


def _model_of(annotation: typing.Any) -> tuple[type[BaseModel] | None, str]:
    """The model inside a field's annotation and how its keys are written: '' (a model), '[]' (a list), '.<name>' (a dict)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<name>"
    return None, ""


def keys_of(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key a YAML file of ``model`` may hold, dotted as the reference writes them."""
    out = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        inner, how = _model_of(info.annotation)
        if inner is not None:
            out += keys_of(inner, f"{key}{how}.")
    return out


def test_every_node_yaml_key_is_in_the_reference():
    missing = [k for k in keys_of(NodeConfig) if f"`{k}`" not in DOC]
    assert missing == []


def test_every_parties_yaml_key_is_in_the_reference():
    keys = ["parties", "communities"] + keys_of(Party, "parties.<name>.") + keys_of(Community, "communities.<name>.")
    assert [k for k in keys if f"`{k}`" not in DOC] == []


def _envvars(cmd: click.Command) -> set[str]:
    found: set[str] = set()
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            found |= _envvars(sub)
        return found
    for param in cmd.params:
        env = getattr(param, "envvar", None)
        found |= {env} if isinstance(env, str) else set(env or ())
    return found


def test_every_environment_variable_is_in_the_reference_under_one_scheme():
    read_in_code = set()
    for path in (REPO / "exchange").rglob("*.py"):
        read_in_code |= set(re.findall(r"CTI_EXCHANGE_[A-Z_]+", path.read_text(encoding="utf-8")))
    variables = _envvars(main) | read_in_code
    assert {"CTI_EXCHANGE_CERT_FILE", "CTI_EXCHANGE_CERTFILE", "CTI_EXCHANGE_PARTNER_URL"} <= variables
    assert sorted(v for v in variables if f"`{v}`" not in DOC) == []
    # the scheme: an option's variable is CTI_EXCHANGE_ + its long name; older names only after it, as aliases
    serve = main.commands["serve"]
    for param in serve.params:
        env = getattr(param, "envvar", None)
        if env:
            first = env if isinstance(env, str) else env[0]
            longs = [o for o in param.opts if o.startswith("--")]
            assert any(first == "CTI_EXCHANGE_" + o[2:].upper().replace("-", "_") for o in longs), (param.opts, env)
