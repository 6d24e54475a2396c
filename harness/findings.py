"""What parity finds: the typed records of a comparison, with no algorithm in them.

A check (`harness.checks`) returns `Finding`s for one prompt; their fold is the prompt's
`PromptParity`; a pair's prompts make its `ParityReport`; three or more sides add an
`Arbitration` per prompt. Results files (`harness.results`) and the report (`harness.report`)
read these types and nothing of the algorithms that fill them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from . import causes

Verdict = Literal["pass", "warn", "fail", "unsupported", "error"]
# a run whose prompts pass where both sides can take them passes; only all-unsupported is "unsupported"
VERDICT_ORDER = {"unsupported": -1, "pass": 0, "warn": 1, "fail": 2, "error": 2}


def worst(*verdicts: Verdict) -> Verdict:
    return max(verdicts, key=lambda v: VERDICT_ORDER[v]) if verdicts else "pass"


# float32 noise between correct engines measured 2e-7..7e-7 per row (tiny-gemma3, JAX vs vLLM);
# a +0.01 change to one norm weight moved its row 2e-3
LOCALIZE_THRESHOLD = 1e-4

Status = Literal["localised", "agree", "unsupported", "not-localisable", "error"]


class LayerRow(BaseModel):
    """One depth of the network: relative differences of the two sides' streams there."""

    index: int  # -1 embedding, 0..N-1 layer, N final norm
    name: str
    rel_max: float  # max |a - b| / max |a| over all tokens
    rel_l2: float  # ||a - b|| / ||a||
    rel_max_text: float | None = None  # over text tokens only
    rel_max_media: float | None = None  # over image/audio soft tokens only (None: the prompt has none)
    local_rel_max: float | None = None  # the local pass: this row computed from the other side's input


class Localization(BaseModel):
    """Where a prompt's two sides part (`status` "localised"), or why that is not known."""

    status: Status
    detail: str
    threshold: float = LOCALIZE_THRESHOLD
    reference: str | None = None  # the side whose stream the others are measured against
    local_side: str | None = None  # the side that ran the local pass
    first_layer: int | None = None  # the first row beyond the threshold
    guilty_layers: list[int] = Field(default_factory=list)  # rows beyond it in the local pass
    region: str | None = None  # where the first row parts: "text", "image", "audio" or "text+image", ...
    tokens: int = 0
    rows: list[LayerRow] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)  # capture time per side (s)
    embedding_scale: float | None = None  # the b side's embedding output over the a side's, when one factor maps one onto the other



class Tolerance(BaseModel):
    """How close two sides must be. `logprob_pass`/`logprob_warn`: bounds on the teacher-forced
    max |dlogprob| (nats); `top_n`: the near-tie rule at a greedy divergence; `exact_greedy`:
    whether any greedy divergence fails (float32) or the top-N rule decides (bfloat16)."""

    name: str
    logprob_pass: float
    logprob_warn: float
    top_n: int = 5
    exact_greedy: bool = True
    reason: str = ""  # why this profile, when it is not the sides' common dtype's



class Token(BaseModel):
    id: int
    text: str


class PromptDiff(BaseModel):
    position: int
    a: list[Token]
    b: list[Token]
    same_text: bool  # both sides' prompts decode to the same text


class Divergence(BaseModel):
    index: int
    a: Token | None  # None: that side stopped here
    b: Token | None
    top_n: int
    a_in_b_top_n: bool | None = None
    b_in_a_top_n: bool | None = None


class Agreement(BaseModel):
    """Teacher-forced comparison of the two sides over the same token sequences."""

    positions: int = 0
    max_abs_dlogprob: float = 0.0
    mean_abs_dlogprob: float = 0.0
    per_token: dict[str, list[float]] = Field(default_factory=dict)  # sequence name -> |dlogprob| per position
    kl_topk_max: float = 0.0
    kl_topk_mean: float = 0.0
    topk_overlap: float = 1.0  # mean |top-k(a) ∩ top-k(b)| / k
    argmax_agreement: float = 1.0
    rank_agreement: float = 1.0  # share of positions whose top-k ids are in the same order
    ppl_a: float | None = None
    ppl_b: float | None = None
    ppl_delta_rel: float | None = None
    non_finite: int = 0  # positions left out because a side's log-prob there is inf or NaN


class Cause(BaseModel):
    """A cause named for a prompt: one declared in `harness.causes` (anything else is refused)."""

    name: str
    explains: bool  # the cross-check confirmed it accounts for the difference
    detail: str
    evidence: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _declared(cls, name: str) -> str:
        if not causes.is_declared(name):
            raise ValueError(f"cause {name!r} is not declared in harness/causes.py")
        return name

    @property
    def kind(self) -> causes.Kind:
        return causes.kind(self.name)

    @property
    def reason(self) -> str:
        """The cause as a prompt's reason: "cause (name): detail", or "hint (...)" for a heuristic
        one (and for `weights` named from a pattern, not from the tensors)."""
        hint = self.kind == "heuristic" or (self.kind == "weights" and not self.explains)
        return f"{'hint' if hint else 'cause'} ({self.name}): {self.detail}"


class Side(BaseModel):
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str


class PromptParity(BaseModel):
    id: str
    modalities: list[str]
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    causes: list[Cause] = Field(default_factory=list)
    prompt_ids_equal: bool | None = None
    prompt_diff: PromptDiff | None = None
    greedy_equal: bool | None = None
    text_equal: bool | None = None
    divergence: Divergence | None = None
    agreement: Agreement | None = None
    image_pixel_max_abs: float | None = None
    localization: Localization | None = None  # where the sides part, layer by layer (when asked)
    a: Side | None = None
    b: Side | None = None


class TensorDiff(BaseModel):
    name: str  # Hugging Face name
    max_abs: float | None  # max |a - b| (None: the shapes differ)
    rel_max: float | None  # max |a - b| / max |a| (None: the shapes differ, or a is all zeros)
    shapes: tuple[list[int], list[int]] | None = None  # when they differ


class WeightsComparison(BaseModel):
    """Both sides' weights, tensor by tensor under their Hugging Face names, each rounded to the
    coarser of the two sides' stored dtypes (`compared_in`)."""

    tensors: int  # compared (names both sides have)
    identical: bool  # every compared tensor equal, and no tensor on one side only
    compared_in: str
    differing: list[TensorDiff] = Field(default_factory=list)  # the largest first (at most 8)
    differing_count: int = 0
    only_a: list[str] = Field(default_factory=list)
    only_b: list[str] = Field(default_factory=list)


class ParityReport(BaseModel):
    a: dict[str, Any]
    b: dict[str, Any]
    tolerance: Tolerance
    sampling: dict[str, Any]
    prompts: list[PromptParity]
    probe: dict[str, Any] | None = None  # the position profile on plain text, when it ran
    weights: WeightsComparison | None = None  # both sides' tensors, when a prompt failed and both could be read
    verdict: Verdict = "pass"
    report_only: bool = False  # measured against its bound, not counted in the run's verdict
    seconds: float | None = None  # wall-clock seconds the pair's parity took

    def by_id(self, prompt_id: str) -> PromptParity:
        return next(p for p in self.prompts if p.id == prompt_id)



class Arbitration(BaseModel):
    """One prompt across three or more sides: which pairs agree, and the odd one out when all
    the others agree with each other and it agrees with none of them."""

    id: str
    agreeing_pairs: list[str]
    odd_one_out: str | None = None
    causes: list[Cause] = Field(default_factory=list)
    line: str




@dataclasses.dataclass(frozen=True)
class Finding:
    """What one check found on one prompt. `verdict`: what the check says of the prompt (None:
    nothing, it only adds data or causes); `settles`: a known cause it confirmed closes the gap to
    float noise, so the prompt's failures become warnings; `record`: the `PromptParity` fields it
    fills (its data: the prompt diff, the divergence, the agreement, ...)."""

    check: str
    verdict: Verdict | None = None
    causes: tuple[Cause, ...] = ()
    reasons: tuple[str, ...] = ()
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    settles: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.record) - set(PromptParity.model_fields)
        if unknown:
            raise ValueError(f"check {self.check}: {sorted(unknown)} are not fields of PromptParity")


def fold(base: PromptParity, findings: list[Finding]) -> PromptParity:
    """The prompt's result: `base` with every finding's causes, reasons and data, and the worst of
    their verdicts (failures turned into warnings when a finding settles them)."""
    verdicts = [f.verdict for f in findings if f.verdict is not None]
    if any(f.settles for f in findings):
        verdicts = ["warn" if v == "fail" else v for v in verdicts]
    update: dict[str, Any] = {}
    for f in findings:
        update.update(f.record)
    return base.model_copy(update={
        **update, "verdict": worst(*verdicts),
        "causes": [*base.causes, *(c for f in findings for c in f.causes)],
        "reasons": [*base.reasons, *(r for f in findings for r in f.reasons)]})
