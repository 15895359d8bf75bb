"""YAML with source positions: every validation error points at file:line:col.

``load_model`` parses YAML into plain data while recording the position of every
node by its path, validates it with pydantic, and turns each validation error into
``<file>:<line>:<col>: <field.path>: <message>`` (a missing field points at its
parent mapping). Duplicate keys are an error, not a silent overwrite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
PathKey = tuple[str | int, ...]


class SpecError(Exception):
    """A spec file that cannot be used; ``str()`` names file, line and field."""

    def __init__(self, file: Path | str, line: int, field: str, message: str, col: int = 1) -> None:
        self.path_in_file = str(file)
        self.line = line
        self.field = field
        self.col = col
        where = f"{file}:{line}:{col}"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


def _convert(node: yaml.Node, path: PathKey, marks: dict[PathKey, tuple[int, int]], file: Path) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = yaml.safe_load(yaml.serialize(knode)) if not isinstance(knode, yaml.ScalarNode) else knode.value
            if key in out:
                raise SpecError(
                    file,
                    knode.start_mark.line + 1,
                    _dotted((*path, key)),
                    f"duplicate key {key!r}",
                    knode.start_mark.column + 1,
                )
            out[key] = _convert(vnode, (*path, key), marks, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, (*path, i), marks, file) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _dotted(path: PathKey) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def load_yaml(file: Path) -> tuple[Any, dict[PathKey, tuple[int, int]]]:
    """Parse ``file``; return (data, positions by path)."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise SpecError(file, 1, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(file, line, "", f"YAML syntax error: {exc.problem}", (mark.column + 1) if mark else 1) from exc
    if node is None:
        return {}, {(): (1, 1)}
    marks: dict[PathKey, tuple[int, int]] = {}
    return _convert(node, (), marks, file), marks


def _position(marks: dict[PathKey, tuple[int, int]], loc: tuple[Any, ...]) -> tuple[int, int]:
    path = tuple(loc)
    while path and path not in marks:
        path = path[:-1]
    return marks.get(path, (1, 1))


def validation_error(file: Path, exc: ValidationError, marks: dict[PathKey, tuple[int, int]]) -> SpecError:
    lines, first = [], None
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), marks)
        item = re.match(r"Value error, (?:step|item) (\d+)", err["msg"])
        if item and loc and loc[-1] == "steps":  # list-level validators name the item
            loc = (*loc, int(item.group(1)))
        line, col = _position(marks, loc)
        field = _dotted(loc)
        msg = err["msg"]
        if err["type"] == "missing":
            msg = f"missing required field {err['loc'][-1]!r}"
        elif err["type"] == "extra_forbidden":
            msg = f"unknown field {err['loc'][-1]!r}"
        lines.append(f"{file}:{line}:{col}: {field}: {msg}")
        if first is None:
            first = (line, col, field, msg)
    assert first is not None
    err_ = SpecError(file, first[0], first[2], first[3], first[1])
    err_.args = ("\n".join(lines),)
    return err_


def _clean_loc(loc: tuple[Any, ...], marks: dict[PathKey, tuple[int, int]]) -> PathKey:
    """Drop pydantic's union-tag segments (e.g. ``generator``) that are not in the file."""
    out: PathKey = ()
    for i, seg in enumerate(loc):
        if (*out, seg) in marks or i == len(loc) - 1:
            out = (*out, seg)
    return out


def load_model(file: Path, model_cls: type[M], *, context: dict[str, Any] | None = None) -> M:
    data, marks = load_yaml(file)
    try:
        return model_cls.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(file, exc, marks) from exc
