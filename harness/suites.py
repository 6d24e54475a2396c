"""Prompt suites: YAML files of chat prompts (text, images, audio) and plain-text prompts, with optional
reference answers.

Schema (docs/suites.md):

    name: images                      # required
    description: what the suite tests
    prompts:
      - id: red-square                # required, unique, [A-Za-z0-9_.-]
        messages:                     # a chat (or text / file below): role system | user | assistant
          - role: user
            content:                  # a string, or a list of parts
              - {type: image, path: media/red_square_64.png}   # relative to the suite's folder
              - {type: audio, path: media/tone_440hz_1s_16k.wav}
              - {type: text, file: media/long_context.txt}     # text from a file
              - {type: text, text: "What colour is this?"}
        reference: red                # optional answer
        scorer: contains              # exact | contains | regex | numeric (needs reference)
        tolerance: 0.01               # numeric only: absolute tolerance (default 1e-6)
        tags: [colour]
      - id: capital                   # a plain-text (completion) prompt: BOS + the text, no chat template
        text: "The capital of France is"
        file: media/long_context.txt  # optional: this file's text comes first, then `text`

Every problem names the file, the line and the field. A prompt that is broken (a field with a
typo, a missing or unreadable image, audio of an unsupported format or rate) is reported on its
own and the suite's other prompts still run (`read`); `load` is the strict form.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backends import InputError, Message, Request
from backends import media as media_rules

from . import yamlio

Scorer = Literal["exact", "contains", "regex", "numeric"]

# The media rule (docs/suites.md) lives in backends.media: images Pillow can decode (over
# MAX_IMAGE_PIXELS refused, a longest side over MAX_IMAGE_SIDE downscaled when the suite is read, so
# every side gets the same smaller image); audio as WAV (PCM 8/16/24/32-bit), mono or stereo,
# 8-48 kHz, 0.1-60 s.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSpec(_Strict):
    type: Literal["text"]
    text: str | None = None
    file: str | None = None  # a text file relative to the suite's folder (long documents)

    @model_validator(mode="after")
    def _one(self) -> TextSpec:
        if (self.text is None) == (self.file is None):
            raise ValueError("a text part needs exactly one of text or file")
        return self


class ImageSpec(_Strict):
    type: Literal["image"]
    path: str


class AudioSpec(_Strict):
    type: Literal["audio"]
    path: str


PartSpec = Annotated[TextSpec | ImageSpec | AudioSpec, Field(discriminator="type")]


class MessageSpec(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[PartSpec]


class PromptSpec(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    messages: list[MessageSpec] | None = Field(None, min_length=1)
    text: str | None = None  # a plain-text (completion) prompt: BOS + this text, no chat template
    file: str | None = None  # ... from a text file relative to the suite's folder (then `text` follows it)
    reference: str | float | int | None = None
    scorer: Scorer | None = None
    tolerance: float | None = Field(None, ge=0)
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _scorer(self) -> PromptSpec:
        plain = self.text is not None or self.file is not None
        if plain == (self.messages is not None):
            raise ValueError("a prompt needs either messages (a chat) or text / file (a plain-text prompt)")
        if self.text is not None and not self.text.strip() and self.file is None:
            raise ValueError("the text is empty; write the prompt's text")
        if self.scorer and self.reference is None:
            raise ValueError(f"scorer {self.scorer} needs a reference answer")
        if self.scorer == "regex":
            try:
                re.compile(str(self.reference))
            except re.error as e:
                raise ValueError(f"reference is not a valid regular expression: {e}") from None
        if self.scorer == "numeric":
            try:
                float(self.reference)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"scorer numeric needs a number as reference, got {self.reference!r}") from None
        if self.tolerance is not None and self.scorer != "numeric":
            raise ValueError("tolerance applies to scorer numeric only")
        return self


class SuiteSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    allow_media_outside: bool = False  # media paths may leave the suite's folder
    prompts: list[Any] = Field(min_length=1)  # each validated on its own (PromptSpec)


@dataclass
class SuitePrompt:
    """One prompt of a suite: its request, or why it cannot run (`error`)."""

    id: str
    line: int | None
    request: Request | None = None
    reference: str | float | int | None = None
    scorer: Scorer | None = None
    tolerance: float | None = None
    tags: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    prompts: list[SuitePrompt]

    @property
    def requests(self) -> list[Request]:
        """The requests of the prompts that can run."""
        return [p.request for p in self.prompts if p.request is not None]

    @property
    def errors(self) -> list[str]:
        return [p.error for p in self.prompts if p.error]

    def by_id(self) -> dict[str, SuitePrompt]:
        return {p.id: p for p in self.prompts}


def read(path: str | Path) -> Suite:
    """The suite at `path`; prompts that cannot run carry their error (file, line, field)."""
    path = Path(path)
    data, node = yamlio.read(path, "suite file")
    if not isinstance(data, dict):
        raise InputError(f"{path} line 1: a suite is a mapping with name and prompts (see docs/suites.md)")
    spec = yamlio.validate(SuiteSpec, data, path, node)
    prompts: list[SuitePrompt] = []
    seen: dict[str, int | None] = {}
    for i, raw in enumerate(spec.prompts):
        line = yamlio.line_of(node, ["prompts", i])
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        pid = raw_id if isinstance(raw_id, str) else f"prompt-{i + 1}"
        try:
            p = yamlio.validate(PromptSpec, raw, path, node, prefix=["prompts", i])
            if p.id in seen:
                raise InputError(f"{path} line {line}: field prompts.{i}.id: {p.id!r} is used twice "
                                 f"(first on line {seen[p.id]})")
            seen[p.id] = line
            request = _request(p, path, node, i, spec.allow_media_outside)
            prompts.append(SuitePrompt(id=p.id, line=line, request=request, reference=p.reference, scorer=p.scorer,
                                       tolerance=p.tolerance, tags=p.tags))
        except InputError as e:
            prompts.append(SuitePrompt(id=pid, line=line, error=str(e)))
    return Suite(name=spec.name, path=path, description=spec.description, prompts=prompts)


def load(path: str | Path) -> tuple[str, list[Request]]:
    """(suite name, requests); the first problem of any prompt is an InputError."""
    suite = read(path)
    if suite.errors:
        raise InputError(suite.errors[0] + (f" (and {len(suite.errors) - 1} more problems: paritybench suites check "
                                            f"{path})" if len(suite.errors) > 1 else ""))
    return suite.name, suite.requests


def check(paths: Sequence[str | Path]) -> list[str]:
    """Every problem in the given suite files (empty: all good), each one line."""
    problems: list[str] = []
    for p in paths:
        try:
            problems += read(p).errors
        except InputError as e:
            problems.append(str(e))
    return problems


# ----------------------------------------------------------------------------- media


def _media_path(path: Path, rel: str, allow_outside: bool) -> tuple[Path, str | None]:
    """The medium's path (relative to the suite's folder), and why it is refused (or None)."""
    media = path.parent / rel
    root = path.parent.resolve()
    if not allow_outside and not media.resolve().is_relative_to(root):
        return media, (f"{rel} leaves the suite's folder {root}; move the file under it, or set "
                       "allow_media_outside: true in the suite")
    return media, None


def _check_turns(messages: list[MessageSpec], path: Path, node, i: int) -> None:
    """One-line errors, at the message's line, for what the engines cannot run: empty text, an
    empty message, and a prompt that does not end with the user's turn (an assistant prefill)."""
    def refuse(loc: list[Any], problem: str) -> InputError:
        where = ["prompts", i, "messages", *loc]
        return InputError(f"{path} line {yamlio.line_of(node, where)}: field {'.'.join(map(str, where))}: {problem}")

    for j, m in enumerate(messages):
        if isinstance(m.content, str) and not m.content.strip():
            raise refuse([j, "content"], "the text is empty; write the message's text (or drop the message)")
        if isinstance(m.content, list) and not m.content:
            raise refuse([j, "content"], "the message has no parts; give it a text, image or audio part")
        for k, part in enumerate(m.content if isinstance(m.content, list) else []):
            if isinstance(part, TextSpec) and part.text is not None and not part.text.strip():
                raise refuse([j, "content", k, "text"], "the text is empty; write the part's text (or drop the part)")
    last = messages[-1]
    if last.role != "user":
        raise refuse([len(messages) - 1, "role"], (
            f"the prompt ends with a{'n' if last.role == 'assistant' else ''} {last.role} message; a prompt must end "
            "with the user's turn (an assistant prefill is not continued): move that text into the user's message "
            "or drop it"))


def _read_text_file(path: Path, rel: str, where: list[Any], node, allow_outside: bool) -> str:
    media, problem = _media_path(path, rel, allow_outside)
    field_name = ".".join(map(str, where))
    if problem:
        raise InputError(f"{path} line {yamlio.line_of(node, where)}: field {field_name}: {problem}")
    try:
        text = media.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path} line {yamlio.line_of(node, where)}: field {field_name}: "
                         f"cannot read text file {media} ({type(e).__name__})") from None
    if not text.strip():
        raise InputError(f"{path} line {yamlio.line_of(node, where)}: field {field_name}: the text file {media} is empty")
    return text


def _request(p: PromptSpec, path: Path, node, i: int, allow_outside: bool = False) -> Request:
    if p.messages is None:
        head = _read_text_file(path, p.file, ["prompts", i, "file"], node, allow_outside) if p.file else ""
        return Request.plain(head + (p.text or ""), id=p.id)
    _check_turns(p.messages, path, node, i)
    msgs: list[dict[str, Any]] = []
    for j, m in enumerate(p.messages):
        if isinstance(m.content, str):
            msgs.append({"role": m.role, "content": m.content})
            continue
        parts = []
        for k, part in enumerate(m.content):
            where = ["prompts", i, "messages", j, "content", k, "path"]
            if isinstance(part, (ImageSpec, AudioSpec)):
                media, problem = _media_path(path, part.path, allow_outside)
                line = yamlio.line_of(node, where)
                field_name = ".".join(map(str, where))
                problem = problem or (media_rules.check_image if part.type == "image" else media_rules.check_audio)(media)
                if problem:
                    raise InputError(f"{path} line {line}: field {field_name}: {problem}")
                parts.append(_image_part(media) if part.type == "image" else {"type": "audio", "path": str(media)})
            elif part.file is not None:
                where[-1] = "file"
                parts.append({"type": "text", "text": _read_text_file(path, part.file, where, node, allow_outside)})
            else:
                parts.append({"type": "text", "text": part.text})
        msgs.append({"role": m.role, "content": parts})
    try:
        return Request(id=p.id, messages=[Message.model_validate(m) for m in msgs])
    except ValidationError as e:  # the role order: one line, pydantic's own message
        line = yamlio.line_of(node, ["prompts", i, "messages"])
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise InputError(f"{path} line {line}: field prompts.{i}.messages: {msg}") from None


def _image_part(media: Path) -> dict:
    """The image part for a checked image: its path, or the downscaled pixels when its longest side
    is over MAX_IMAGE_SIDE."""
    small = media_rules.downscaled(media)
    return {"type": "image", "path": str(media)} if small is None else {"type": "image", "array": small}
