"""Sides open side by side in threads, after every engine's libraries are imported in the caller's
thread, one engine after another (gemma's imports replace `builtins.__import__` process-wide)."""

from __future__ import annotations

import sys
import threading
import time

import backends
from backends import _engines
from harness.comparison import open_sides
from harness.config import CompareConfig

EVENTS: list[tuple[str, str, str]] = []  # (what, engine, thread)


class _Probe(backends.BaseBackend):
    name = "probe"

    @classmethod
    def import_libraries(cls) -> None:
        EVENTS.append(("import", cls.name, threading.current_thread().name))
        time.sleep(0.2)

    def __init__(self, model: str) -> None:
        EVENTS.append(("open", self.name, threading.current_thread().name))
        time.sleep(0.3)
        self.model = model

    def memory(self) -> backends.MemorySnapshot:
        return backends.MemorySnapshot(backend=self.name, device="cpu")


class ProbeA(_Probe):
    name = "probe-a"


class ProbeB(_Probe):
    name = "probe-b"


def test_libraries_are_imported_in_the_callers_thread_before_any_side_opens(monkeypatch):
    monkeypatch.setitem(_engines.BUILTIN, "probe-a", f"{__name__}:ProbeA")
    monkeypatch.setitem(_engines.BUILTIN, "probe-b", f"{__name__}:ProbeB")
    assert sys.modules[__name__].ProbeA is ProbeA
    EVENTS.clear()
    release = threading.Event()
    t0 = time.perf_counter()
    sides = open_sides(CompareConfig(backends=["probe-a", "probe-b"]), release)
    release.set()
    imports = [e for e in EVENTS if e[0] == "import"]
    opens = [e for e in EVENTS if e[0] == "open"]
    assert imports == [("import", "probe-a", "MainThread"), ("import", "probe-b", "MainThread")]
    assert EVENTS[:2] == imports  # both before either side opens
    assert {e[2] for e in opens} == {"paritybench-setup-probe-a", "paritybench-setup-probe-b"}
    assert list(sides) == ["probe-a", "probe-b"]
    # each side's set-up seconds include its engine's imports; the two opened at once
    assert all(o.setup_s >= 0.45 for o in sides.values()), sides
    assert time.perf_counter() - t0 < 0.4 + 0.3 + 0.25


def test_a_sides_first_work_starts_in_its_thread_once_open_and_is_not_waited_for(monkeypatch):
    monkeypatch.setitem(_engines.BUILTIN, "probe-a", f"{__name__}:ProbeA")
    monkeypatch.setitem(_engines.BUILTIN, "probe-b", f"{__name__}:ProbeB")
    began: dict[str, tuple[str, float]] = {}
    finished = threading.Event()

    def then(name, side):
        began[name] = (threading.current_thread().name, time.perf_counter())
        assert side.model  # the opened side
        time.sleep(1.0)
        finished.set()

    release = threading.Event()
    t0 = time.perf_counter()
    sides = open_sides(CompareConfig(backends=["probe-a", "probe-b"]), release, then=then)
    returned = time.perf_counter()
    release.set()
    assert returned - t0 < 0.4 + 0.3 + 0.5 and not finished.is_set()  # the second of work not waited for
    finished.wait(2)
    assert began["probe-a"][0] == "paritybench-setup-probe-a" and began["probe-b"][0] == "paritybench-setup-probe-b"
    assert all(s.memory is not None for s in sides.values())  # read before the work began
