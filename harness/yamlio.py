"""YAML files validated by pydantic models, with errors that name the file, the line and the field."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from backends import InputError

M = TypeVar("M", bound=BaseModel)


def read(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of a YAML file; InputError naming the file (and line) if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read this {what} ({type(e).__name__}: {e})") from None
    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        elif isinstance(getattr(e, "position", None), int):  # a ReaderError: a character YAML does not allow
            line = text[: e.position].count("\n") + 1
        else:
            line = 1
        what = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
        if isinstance(e, yaml.reader.ReaderError):
            what = f"{e.reason} (character {e.character!r})"
        raise InputError(f"{path} line {line}: invalid YAML: {what}") from None


def line_of(node: yaml.Node | None, loc: Sequence[Any], *, at_key: bool = False) -> int | None:
    """1-based line of the value at `loc` (keys and list indices), or of its nearest parent; with
    `at_key`, the line of the last key itself (for an unknown field)."""
    line = node.start_mark.line + 1 if node is not None else None
    for n, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pairs = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(key)]
            if pairs and at_key and n == len(loc) - 1:
                return pairs[0][0].start_mark.line + 1
            if not pairs:  # a missing key: the mapping that should hold it
                break
            node = pairs[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _real_loc(loc: Sequence[Any]) -> list[Any]:
    """A pydantic error location without the names of union branches ('str', 'list[...]', ...)."""
    return [x for x in loc if not (isinstance(x, str) and (x in _TYPE_TAGS or "[" in x or x.startswith("function-")))]


def _most_telling(errors: list[ErrorDetails]) -> ErrorDetails:
    """An unknown field (most often a typo) first, then the deepest location (a union's right branch)."""
    return min(errors, key=lambda err: (err["type"] != "extra_forbidden", -len(_real_loc(err["loc"]))))


def error_text(path: str | Path, node: yaml.Node | None, e: ValidationError, prefix: Sequence[Any] = ()) -> str:
    """One line: 'FILE line N: field a.b: message' for the most telling error."""
    first = _most_telling(e.errors())
    loc = [*prefix, *_real_loc(first["loc"])]
    line = line_of(node, loc, at_key=first["type"] == "extra_forbidden")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field (a typo?)"
    where = f"field {'.'.join(str(x) for x in loc)}: " if loc else ""  # a check across fields names them itself
    return f"{path}{f' line {line}' if line else ''}: {where}{msg}"


def validate(model: type[M], data: Any, path: str | Path, node: yaml.Node | None, prefix: Sequence[Any] = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(error_text(path, node, e, prefix)) from None
