"""Signals, handled in one place.

SIGINT raises KeyboardInterrupt and SIGTERM raises SystemExit(143), so `with` blocks and
`finally` clauses run: managed servers stop, results already measured are written. A handler's
exception is swallowed by Python when the signal lands inside a garbage-collection callback (JAX
registers one), so the signal is also noted and `stop_point()` raises it at the next safe point
(each prompt, each benchmark level).
"""

from __future__ import annotations

import gc
import signal
import threading
from typing import Any

_stop_signal: int | None = None


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _on_signal(signum: int, frame: Any) -> None:
    global _stop_signal
    _stop_signal = signum
    if frame is not None and any(getattr(cb, "__code__", None) is frame.f_code for cb in gc.callbacks):
        return  # Python would print and swallow it there; the next stop point raises instead
    _raise_for(signum)


def install_signal_handlers() -> None:
    """SIGINT -> KeyboardInterrupt, SIGTERM -> SystemExit(143), both also noted for `stop_point`."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def ensure_sigterm_raises() -> None:
    """Make SIGTERM raise (so a managed server is stopped) unless someone already handles it."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_signal)


def stop_point() -> None:
    """Raise the interruption a signal asked for, if one did."""
    if _stop_signal is not None:
        _raise_for(_stop_signal)


def stop_requested() -> int | None:
    return _stop_signal
