"""HTTP to one or several OpenAI-compatible servers: the `Transport` part of
`OpenAICompatibleBackend`.

Requests go through aiohttp (as `vllm bench serve` does), on one event loop thread of the
backend's own: at most `max_concurrency` requests in flight, each with `request_timeout` seconds;
connection errors (only those) are retried with exponential backoff. Several servers (data
parallel) take the requests round robin; one that stops answering is left out and its requests go
to the others. HTTP 400 is the request's fault (`InputError`), any other status the server's
(`ModelError`). Messages name the engine by its class's `title` ("vLLM rejected the request ...").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .._errors import InputError, ModelError
from ._payloads import error_text

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")
# the server a request is meant for (its metrics, its models), set around a call; None: the next one
_ROOT: contextvars.ContextVar[str | None] = contextvars.ContextVar("paritybench_openai_root", default=None)


def root_url(url: str, title: str = "server") -> str:
    """http://host:port/v1 -> http://host:port (where /health, /metrics, /tokenize live)."""
    parts = urlsplit(url.rstrip("/"))
    if not parts.scheme or not parts.netloc:
        raise InputError(f"{title} URL {url!r} is not an http(s) URL; give it like http://host:8000/v1")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.removesuffix("/v1"), "", ""))


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The client's event loop thread. SIGINT and SIGTERM are blocked here so the kernel delivers
    them to the main thread: delivered here, they would only set Python's flag while the main
    thread sleeps in a lock wait that nothing interrupts (a Ctrl-C that hangs)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    loop.run_forever()


class Transport:
    """The HTTP client of an OpenAI-compatible backend. The backend sets the attributes below,
    then calls `_start_loop`; engines override `advice_for`, `_connection_lost` and `_load_note`."""

    name: ClassVar[str]
    title: ClassVar[str]
    url: str
    root_url: str
    max_concurrency: int
    request_timeout: float
    retries: int
    load_s: float | None
    warmup_s: float | None
    _api_key: str | None
    _roots: list[str]
    _gone: dict[str, str]  # root -> what happened
    _turn: int
    _loop: asyncio.AbstractEventLoop | None
    _session: aiohttp.ClientSession | None
    _sem: asyncio.Semaphore

    # ---------------------------------------------------------------- engine hooks

    def advice_for(self, message: str) -> str | None:
        """Advice for a known failure the server reported (none by default)."""
        return None

    def _connection_lost(self) -> None:
        """Called when a connection fails: an engine that runs its server raises `BackendGone` here
        if the server died (nothing by default)."""

    def _load_note(self) -> str:
        """What a timeout message adds about the server's load time."""
        if self.load_s is None:
            return ""
        note = f" (this server took {self.load_s:.0f} s to load the model"
        return note + (f" and {self.warmup_s:.1f} s for its first request)" if self.warmup_s is not None else ")")

    # ---------------------------------------------------------------- the loop

    def _start_loop(self) -> None:
        import aiohttp

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=_run_loop, args=(self._loop,), name=f"paritybench-{self.name}", daemon=True).start()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

        async def make() -> None:
            # aiohttp, as `vllm bench serve` uses: through the openai client (on httpx's transport
            # or on aiohttp via httpx-aiohttp) the same streamed requests ran 3-5x slower on these
            # 2-core machines while vLLM's own histograms showed the server idle; see
            # benchmarks/vllm_vs_vllm_bench.py.
            self._session = aiohttp.ClientSession(headers=headers,
                                                  connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
            self._sem = asyncio.Semaphore(self.max_concurrency)

        self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} used after close()")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            while not fut.done():  # short waits: between them a signal's handler runs (KeyboardInterrupt)
                concurrent.futures.wait([fut], timeout=0.5)
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def _gather(self, coros: list[Awaitable[T]]) -> list[T]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _close_loop(self) -> None:
        if self._loop is None:
            return

        async def shut() -> None:
            if self._session is not None:
                await self._session.close()
            await asyncio.get_running_loop().shutdown_asyncgens()

        with contextlib.suppress(Exception):  # closing must not raise; the loop stops regardless
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None

    # ---------------------------------------------------------------- servers

    async def _call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One API call under the concurrency bound, on the next server that answers, retried on
        connection errors only (another server first, when there are several)."""
        import aiohttp

        delay = 0.5
        pinned = _ROOT.get()  # a request meant for one server (its metrics, its models)
        async with self._sem:
            for attempt in range(self.retries + 1):
                root = pinned or self._pick()
                token = _ROOT.set(root)
                try:
                    return await asyncio.wait_for(fn(*args, **kwargs), timeout=self.request_timeout)
                except TimeoutError:
                    raise ModelError(self._timeout_message(what)) from None
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                    self._connection_lost()
                    if pinned is None and self._leave_out(root, f"{type(e).__name__} during {what}"):
                        continue  # the others take its requests, this one included
                    if attempt == self.retries:
                        raise ModelError(
                            f"{what}: cannot reach {self.title} at {self.url} after {self.retries + 1} tries "
                            f"({type(e).__name__}); is the server still running?") from None
                    await asyncio.sleep(delay)
                    delay *= 2
                finally:
                    _ROOT.reset(token)
        raise AssertionError("unreachable: the last try returns or raises")

    async def _at(self, root: str, make: Callable[[], Awaitable[T]]) -> T:
        """`make()` awaited with every request it sends going to the server at `root`."""
        token = _ROOT.set(root)
        try:
            return await make()
        finally:
            _ROOT.reset(token)

    def _live_roots(self) -> list[str]:
        return [r for r in self._roots if r not in self._gone]

    def _pick(self) -> str:
        """The server for the next request: round robin over those still answering."""
        live = self._live_roots() or self._roots
        self._turn += 1
        return live[self._turn % len(live)]

    def _leave_out(self, root: str, why: str) -> bool:
        """With another server still answering, leave `root` out from now on; True if so."""
        if len([r for r in self._live_roots() if r != root]) == 0:
            return False
        self._gone.setdefault(root, why)
        return True

    # ---------------------------------------------------------------- requests

    async def _request(self, method: str, path: str, what: str, body: dict | None = None) -> aiohttp.ClientResponse:
        """An HTTP response with status 200 (the caller reads it), or the server's error as ours:
        HTTP 400 -> InputError (the request is at fault), anything else -> ModelError."""
        assert self._session is not None  # made by _start_loop, before any request
        resp = await self._session.request(method, (_ROOT.get() or self.root_url) + path, json=body)
        if resp.status == 200:
            return resp
        try:
            text = await resp.text()
        finally:
            resp.release()
        msg = error_text(text)
        if resp.status == 400:
            raise InputError(f"{what}: {self.title} rejected the request (HTTP 400): {msg}")
        advice = self.advice_for(msg)
        raise ModelError(f"{what}: {self.title} answered HTTP {resp.status} at {path}: {msg}" + (f"; {advice}" if advice else ""))

    def _timeout_message(self, what: str) -> str:
        return (f"{what}: no answer from {self.title} at {self.url} within {self.request_timeout:g} s{self._load_note()}; "
                "raise request_timeout")

    async def _get_json(self, path: str) -> Any:
        async def get() -> Any:
            async with await self._request("GET", path, f"GET {path}") as r:
                return await r.json()

        return await self._call(f"GET {path}", get)

    async def _post_json(self, path: str, body: dict[str, Any], what: str) -> Any:
        async def post() -> Any:
            async with await self._request("POST", path, what, body) as r:
                return await r.json()

        return await self._call(what, post)

    async def _try_post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST once, for a probe: (HTTP status, the JSON answer or the error's text); never raised
        for a status (connection errors and timeouts are, as for any call)."""
        assert self._session is not None

        async def post() -> tuple[int, Any]:
            async with self._session.post((_ROOT.get() or self.root_url) + path, json=body) as r:  # type: ignore[union-attr]
                if r.status == 200 and r.content_type == "application/json":
                    return r.status, await r.json()
                return r.status, error_text(await r.text())

        return await self._call(f"POST {path}", post)
