"""YAML loading that remembers where each key stands, for one-line errors.

``load_with_lines(path)`` returns the plain Python data and a mapping from a
key path (a tuple of keys and list indexes) to its 1-based line number, so a
schema error can say ``policies/sccf.yaml:12: clauses.0.source: field required``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from exchange.errors import ConfigError

LinePath = tuple[Any, ...]


def _construct(node: yaml.Node, path: LinePath, lines: dict[LinePath, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise ConfigError(f"duplicate key {key!r}", status=500) from None
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node, deep=True)


def load_with_lines(path: Path) -> tuple[Any, dict[LinePath, int]]:
    """Parse one YAML file; raise ``ConfigError`` naming the file and line on bad YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from exc
    lines: dict[LinePath, int] = {}
    if root is None:
        return None, lines
    try:
        data = _construct(root, (), lines)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc
    return data, lines


def line_of(lines: dict[LinePath, int], loc: LinePath) -> int | None:
    """The line of the deepest prefix of ``loc`` that has a known line."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def _data_loc(lines: dict[LinePath, int], raw: LinePath) -> LinePath:
    """The part of a pydantic error location that names keys of the data.

    pydantic inserts its own steps (``function-...`` validators, the tag of a
    discriminated union such as ``own-release``); those are dropped when the
    data has no such key, so the error names ``clauses.3.rule.levels.1``.
    """
    parts = [p for p in raw if not (isinstance(p, str) and p.startswith("function-"))]
    if not lines:
        return tuple(parts)
    out: list[Any] = []
    for i, part in enumerate(parts):
        if tuple(out) + (part,) in lines or i == len(parts) - 1:
            out.append(part)
    return tuple(out)


def validation_error(path: Path, lines: dict[LinePath, int], exc: ValidationError) -> ConfigError:
    """Turn the first pydantic error into a one-line ``ConfigError``: file, line, key, message."""
    err = exc.errors()[0]
    loc = _data_loc(lines, err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = line_of(lines, loc)
    where = f"{path}:{line}" if line else str(path)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return ConfigError(f"{where}: {key}: {msg}")


def load_model(path: Path, model: type[BaseModel], context: dict[str, Any] | None = None) -> BaseModel:
    """Load a YAML file and validate it against a pydantic model, one-line errors."""
    data, lines = load_with_lines(path)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(path, lines, exc) from exc
