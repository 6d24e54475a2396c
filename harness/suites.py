"""Load prompt suites (YAML) into `backends.Request`s, with errors that name file and field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from backends import InputError, Message, Request


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    messages: list[dict]
    reference: str | None = None


class _Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    prompts: list[_Prompt]


def load(path: str | Path) -> tuple[str, list[Request]]:
    """(suite name, requests) from a suite file; relative media paths resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"suite file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    try:
        suite = _Suite.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise InputError(f"{path}: field {loc}: {first['msg']}") from None
    requests = []
    for p in suite.prompts:
        msgs = []
        for m in p.messages:
            content = m.get("content")
            if isinstance(content, list):
                content = [_resolve(part, path.parent) for part in content]
            msgs.append({**m, "content": content})
        try:
            requests.append(Request(id=p.id, messages=[Message.model_validate(m) for m in msgs]))
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise InputError(f"{path}: prompt {p.id}: {loc}: {first['msg']}") from None
        except ValueError as e:
            raise InputError(f"{path}: prompt {p.id}: {e}") from None
    return suite.name, requests


def _resolve(part: dict, base: Path) -> dict:
    if isinstance(part, dict) and part.get("type") in ("image", "audio") and "path" in part:
        return {**part, "path": str(base / part["path"])}
    return part
