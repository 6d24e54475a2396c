"""Scorers of an answer against a suite prompt's reference: exact, contains, regex, numeric."""

from __future__ import annotations

import re
from typing import Any

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def normalize(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding punctuation and quotes stripped."""
    return " ".join(text.casefold().split()).strip(" .,!?;:'\"`«»")


def first_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if not m:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


def score(scorer: str, reference: Any, answer: str, tolerance: float | None = None) -> bool:
    """Whether `answer` is right under `scorer`:
    exact     normalized answer == normalized reference
    contains  normalized reference occurs in the normalized answer
    regex     re.search(reference, answer) (use (?i) for case-insensitive)
    numeric   the answer's first number is within `tolerance` (default 1e-6) of the reference
    """
    if scorer == "exact":
        return normalize(answer) == normalize(str(reference))
    if scorer == "contains":
        return normalize(str(reference)) in normalize(answer)
    if scorer == "regex":
        return re.search(str(reference), answer) is not None
    if scorer == "numeric":
        x = first_number(answer)
        return x is not None and abs(x - float(reference)) <= (1e-6 if tolerance is None else tolerance)
    raise ValueError(f"unknown scorer {scorer!r}; use exact, contains, regex or numeric")


def accuracy(correct: list[bool]) -> float | None:
    return sum(correct) / len(correct) if correct else None
