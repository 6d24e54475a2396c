"""Parity's generations made ahead (while another side still starts) and the two sides' work side
by side: what is made ahead with parity's sampling is used, the rest is made; errors and order kept."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

import backends
from backends import Capabilities, Generation, ParitybenchError, Request, SamplingParams, Timings
from harness import parity


class Counting(backends.BaseBackend):
    """Generates each prompt's text reversed as token ids; counts the prompts it was asked."""

    name = "counting"
    capabilities = Capabilities(modalities=frozenset({"text"}))

    def __init__(self, refuse: str | None = None) -> None:
        self.asked: list[str] = []
        self.refuse = refuse

    def generate(self, requests, sampling):
        if any(r.id == self.refuse for r in requests):
            raise ParitybenchError(f"{self.refuse} refused")
        self.asked += [r.id for r in requests]
        return [Generation(request_id=r.id, prompt_ids=[1], token_ids=[ord(c) for c in r.id], text=r.id,
                           finish_reason="length", timings=Timings(e2e_s=0.0))
                for r in requests]


def reqs(*ids: str) -> list[Request]:
    return [Request.from_text(i, id=i) for i in ids]


def done(g: parity.Greedy) -> Future[parity.Greedy]:
    f: Future[parity.Greedy] = Future()
    f.set_result(g)
    return f


def test_generations_made_ahead_are_used_and_only_the_rest_is_made():
    side = Counting()
    s = parity.greedy_sampling(8, 5)
    early = parity.greedy(side, reqs("a", "b"), s)
    assert side.asked == ["a", "b"] and set(early.by_id) == {"a", "b"} and early.seconds >= 0
    rs = reqs("a", "b", "c")
    gens = parity._greedy_of(side, list(zip(parity.prompt_ids(rs), rs)), s, done(early))
    assert side.asked == ["a", "b", "c"]  # only c made now
    assert [g.text for g in gens] == ["a", "b", "c"]
    # made with another sampling (more alternatives per token): all made again
    other = parity.greedy_sampling(8, 10)
    assert other != s
    parity._greedy_of(side, list(zip(parity.prompt_ids(rs), rs)), other, done(early))
    assert side.asked == ["a", "b", "c", "a", "b", "c"]


def test_a_failed_prompt_made_ahead_stays_its_error():
    side = Counting(refuse="b")
    early = parity.greedy(side, reqs("a", "b"), parity.greedy_sampling(8, 5))
    assert isinstance(early.by_id["b"], ParitybenchError) and early.by_id["a"].text == "a"


def test_an_error_made_ahead_reaches_parity():
    f: Future[parity.Greedy] = Future()
    f.set_exception(backends.BackendGone("the server is gone"))
    rs = reqs("a")
    with pytest.raises(backends.BackendGone):
        parity._greedy_of(Counting(), [("a", rs[0])], parity.greedy_sampling(8, 5), f)


def test_side_by_side_runs_at_once_keeps_order_and_raises_the_first_error_without_waiting():
    threads = set()

    def slow(v):
        def call():
            threads.add(threading.current_thread().name)
            time.sleep(0.4)
            return v
        return call

    t0 = time.perf_counter()
    assert parity.side_by_side(slow(1), slow(2)) == [1, 2]
    assert time.perf_counter() - t0 < 0.7  # not 0.8: at once
    assert len(threads) == 2 and threading.current_thread().name not in threads

    def fails():
        time.sleep(0.05)
        raise backends.BackendGone("gone")

    t0 = time.perf_counter()
    with pytest.raises(backends.BackendGone):
        parity.side_by_side(lambda: time.sleep(3), fails)
    assert time.perf_counter() - t0 < 1.0  # the other side's 3 s are not waited for


def test_sampling_covers_the_near_tie_rule():
    assert parity.greedy_sampling(16, 2).logprobs == 5  # every profile's top-n
    assert parity.greedy_sampling(16, 8).logprobs == 8
    assert parity.greedy_sampling(16, 2, parity.PROFILES["bfloat16"]) == SamplingParams(max_tokens=16, logprobs=5)
