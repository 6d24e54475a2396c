"""A server program as a managed child process, for every engine that runs one (vLLM's
`vllm serve`, llama.cpp's `llama-server`): started in a process group of its own with its output
in a log file, waited on until its health route answers, watched, and stopped with every process
it started when the `with` block ends (normally, by an exception, by SIGINT or by SIGTERM) and at
interpreter exit; if the harness itself is killed, the kernel sends the server SIGTERM
(`setpriv --pdeathsig`).

A subclass gives its `command`, and where it differs, `_environment`, `_workdir`, `advice_for`
and `_after_start`.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import httpx

from ._errors import BackendGone, ModelError
from ._signals import ensure_sigterm_raises

LOG_TAIL_LINES = 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("  | " + line for line in lines[-n:])


_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()
_handlers_installed = False


def _stop_all() -> None:
    for s in list(_live):
        s.stop()


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    ensure_sigterm_raises()  # SIGINT already raises KeyboardInterrupt, which unwinds the same way


def _die_with_parent_prefix() -> list[str]:
    """`setpriv --pdeathsig TERM` (util-linux): the kernel SIGTERMs the server if the harness dies
    without cleaning up (SIGKILL). Not a preexec_fn: running Python between fork and exec is unsafe
    in a multithreaded process such as one that has imported JAX."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv and sys.platform.startswith("linux") else []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class ServerProcess(abc.ABC):
    """One server program as a child process group (see the module doc)."""

    title: ClassVar[str] = "server"  # in messages: "vLLM server", "llama.cpp server"
    health_path: ClassVar[str] = "/health"

    def __init__(self, model: str, *, host: str, port: int | None, startup_timeout: float,
                 log_path: str | os.PathLike | None, log_dir: Path, log_prefix: str) -> None:
        self.model = model
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self._log_dir = log_dir
        self._log_prefix = log_prefix
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._log_file: BinaryIO | None = None

    # ------------------------------------------------------------------ what a subclass gives

    @property
    @abc.abstractmethod
    def command(self) -> list[str]:
        """The program and its arguments (the subclass's: `vllm serve ...`, `llama-server ...`)."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _workdir(self) -> Path | None:
        return None

    def advice_for(self, text: str) -> str | None:
        """What to do about a failure this program logged (None: nothing known)."""
        return None

    def _after_start(self) -> None:  # noqa: B027 (a hook: nothing by default)
        """Once healthy (vLLM places its processes on cores here)."""

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Any:
        if self.proc is not None:
            return self
        _install_handlers()
        if self.port is None:
            self.port = free_port()
        if self.log_path is None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self._log_dir / f"{self._log_prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        self._log_file.write(("$ " + " ".join(self.command) + "\n").encode())
        self._log_file.flush()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            _die_with_parent_prefix() + self.command, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._environment(), cwd=str(self._workdir() or Path.cwd()), start_new_session=True,
        )
        _live.add(self)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        self._after_start()
        return self

    def _wait_healthy(self, t0: float) -> None:
        assert self.proc is not None  # only called from start(), once the process runs
        health = self.base_url + self.health_path
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ModelError(self._death_message(f"exited with code {code} during start-up"))
                with contextlib.suppress(httpx.HTTPError):  # not listening yet: keep waiting
                    if client.get(health).status_code == 200:
                        return
                if time.perf_counter() - t0 > self.startup_timeout:
                    raise ModelError(self._death_message(
                        f"did not answer {health} within {self.startup_timeout:.0f} s (raise startup_timeout "
                        "if the model is large or the machine busy)"))
                time.sleep(0.5)

    def _death_message(self, what: str) -> str:
        text = tail(self.log_path) if self.log_path else ""
        advice = self.advice_for(text)
        return (f"{self.title} for {self.model} (pid {self.pid}) {what}"
                + (f"; {advice}" if advice else "")
                + f". Log: {self.log_path}; its last lines:\n{text}")

    def check_alive(self) -> None:
        """Raise a clear error if the managed server has died (e.g. killed or out of memory)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BackendGone(self._death_message(f"is gone (exit code {self.proc.returncode})"))

    def process_tree(self) -> list:
        """The server's processes (psutil.Process), itself first."""
        import psutil

        if not self.alive():
            return []
        assert self.proc is not None  # alive() checked it
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left (group and stragglers).
        The wait: 20 s for a server that became healthy (its shutdown aborts requests in flight and
        releases its engine), 3 s for one still starting, which has nothing to release and whose
        processes, interrupted while they spawn and import, may not end on SIGTERM (a SIGTERM to
        `compare` during start-up then took 25 s to return)."""
        proc = self.proc
        if proc is None:
            return
        import psutil

        if timeout is None:
            timeout = 20.0 if self.startup_s is not None else 3.0

        procs = self.process_tree()
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
            gone, alive = psutil.wait_procs(procs, timeout=wait)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            procs = alive
            if not alive and proc.poll() is not None and not _group_alive(pgid):
                break
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        _live.discard(self)
        self.proc = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
