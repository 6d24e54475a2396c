"""Quality of each side's model, measured as model evaluations measure it, and each side against the
reference side:

- perplexity on a text corpus (each paragraph a document: BOS + its text, teacher-forced; every
  side scores the same ids), compared as vLLM's own perplexity test compares engines: a side may
  be at most 1 % worse than the reference (`PERPLEXITY_TOLERANCE`);
- log-likelihood accuracy on a multiple-choice suite (evals/quality/knowledge.yaml), scored as lm-eval
  scores multiple choice: the continuation with the highest summed log-prob (acc) or the highest per
  character (acc_norm), with a Wilson 95 % interval, the difference from the reference and the
  share of items on which both chose the same continuation.

A quantized or reduced-precision side (a bound, or "report") is measured and reported, not judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backends import Backend, InputError, Request

from . import yamlio
from .results import Accuracy, Perplexity, SideQuality

PERPLEXITY_TOLERANCE = 0.01  # vLLM's perplexity test: at most 1 % above the reference
Z95 = 1.959963984540054
CHUNK = 32  # continuations scored per call


class _ItemSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    context: str = Field(min_length=1)
    choices: list[str] = Field(min_length=2)
    answer: int = Field(ge=0)


class _SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    items: list[_ItemSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Item:
    id: str
    context: str
    choices: tuple[str, ...]
    answer: int


def load_items(path: str | Path) -> list[Item]:
    """A multiple-choice suite: name, items of id, context, choices, answer (index)."""
    path = Path(path)
    data, node = yamlio.read(path, "multiple-choice suite")
    spec = yamlio.validate(_SuiteSpec, data, path, node)
    items = []
    for i, it in enumerate(spec.items):
        if it.answer >= len(it.choices):
            raise InputError(f"{path} line {yamlio.line_of(node, ['items', i, 'answer'])}: field items.{i}.answer: "
                             f"{it.answer} is not the index of one of its {len(it.choices)} choices (0-based)")
        items.append(Item(it.id, it.context, tuple(it.choices), it.answer))
    return items


def load_corpus(path: str | Path) -> list[str]:
    """The corpus's documents: its paragraphs (blank-line separated)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the perplexity corpus ({type(e).__name__}); give a UTF-8 text file") \
            from None
    docs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not docs:
        raise InputError(f"{path}: the perplexity corpus is empty")
    return docs


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def document_ids(tokenizer: Backend, docs: Sequence[str], max_len: int) -> list[list[int]]:
    """Each document as the reference side feeds it (BOS + text), cut into pieces of at most
    `max_len` ids, each piece starting with BOS again."""
    out = []
    for doc in docs:
        ids = tokenizer.prompt_ids(Request.plain(doc))
        bos, rest = ids[:1], ids[1:]
        for start in range(0, len(rest), max_len - 1):
            out.append(bos + rest[start:start + max_len - 1])
    return out


def perplexity(side: Backend, name: str, pieces: Sequence[Sequence[int]]) -> Perplexity:
    total, count = 0.0, 0
    for ids in pieces:
        lp = side.score_ids(list(ids)).logprobs
        total -= float(np.sum(lp, dtype=np.float64))
        count += len(lp)
    nll = total / max(count, 1)
    return Perplexity(corpus=name, documents=len(pieces), tokens=count, nll=nll, perplexity=math.exp(nll))


@dataclass(frozen=True)
class Encoded:
    """The items as ids: each choice's continuation as lm-eval splits it (the ids of context +
    choice after those of the context)."""

    items: list[Item]
    continuations: list[list[list[int]]]


def encode_items(tokenizer: Backend, items: Sequence[Item]) -> Encoded:
    conts = []
    for it in items:
        ctx = tokenizer.text_ids(it.context)
        conts.append([tokenizer.text_ids(it.context + c)[len(ctx):] or tokenizer.text_ids(c) for c in it.choices])
    return Encoded(list(items), conts)


def accuracy(side: Backend, suite: str, enc: Encoded) -> Accuracy:
    reqs, conts, where = [], [], []
    for i, (it, cs) in enumerate(zip(enc.items, enc.continuations)):
        for j, c in enumerate(cs):
            reqs.append(Request.plain(it.context, id=f"{it.id}/{j}"))
            conts.append(c)
            where.append((i, j))
    sums = [[0.0] * len(it.choices) for it in enc.items]
    for start in range(0, len(reqs), CHUNK):
        scored = side.score(reqs[start:start + CHUNK], conts[start:start + CHUNK])
        for (i, j), sc in zip(where[start:start + CHUNK], scored):
            sums[i][j] = float(np.sum(sc.logprobs, dtype=np.float64))
    answers = [int(np.argmax(s)) for s in sums]
    norm = [int(np.argmax([v / max(1, len(c)) for v, c in zip(s, it.choices)])) for s, it in zip(sums, enc.items)]
    correct = sum(a == it.answer for a, it in zip(answers, enc.items))
    n = len(enc.items)
    low, high = wilson(correct, n)
    chance = float(np.mean([1 / len(it.choices) for it in enc.items]))
    return Accuracy(suite=suite, items=n, correct=correct, acc=correct / n, low=low, high=high,
                    acc_norm=sum(a == it.answer for a, it in zip(norm, enc.items)) / n, chance=chance, answers=answers)


def measure(side: Backend, corpora: dict[str, list[list[int]]], suite: str | None, enc: Encoded | None) -> SideQuality:
    ppl = [perplexity(side, name, pieces) for name, pieces in corpora.items()]
    acc = accuracy(side, suite, enc) if enc is not None and suite is not None else None
    return SideQuality(perplexity=ppl, accuracy=acc)


def against(ref_name: str, ref: SideQuality, q: SideQuality, *, judged: bool) -> SideQuality:
    """`q` with its figures against the reference `ref` and a verdict: pass when every corpus's
    perplexity is at most 1 % above the reference's; "report" for a side that is not judged."""
    ratio = {p.corpus: p.perplexity / r.perplexity for p, r in zip(q.perplexity, ref.perplexity) if r.perplexity > 0}
    reasons = [f"{c}: perplexity {r:.4f}x the reference's ({ref_name})" for c, r in ratio.items()
               if r > 1 + PERPLEXITY_TOLERANCE]
    delta = same = None
    if q.accuracy is not None and ref.accuracy is not None:
        delta = q.accuracy.acc - ref.accuracy.acc
        same = float(np.mean([a == b for a, b in zip(q.accuracy.answers, ref.accuracy.answers)]))
    verdict = "report" if not judged else ("fail" if reasons else "pass")
    return q.model_copy(update={"reference": ref_name, "perplexity_ratio": ratio, "accuracy_delta": delta,
                                "same_choice": same, "verdict": verdict, "reasons": reasons})
