"""A real HTTP server the tests start, that records what it is sent and answers as told:
the webhook a gate asks, the receiver notifications are posted to, a reverse proxy that
counts requests to Prometheus. Served from a thread of its own, so synchronous tests (and
lockd subprocesses) can use it as well as async ones."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Answers each request with the next status in ``answers`` (200 once they run out),
    after ``delay`` seconds; records every request. With ``upstream``, it forwards GETs
    there instead (a counting reverse proxy)."""

    def __init__(self, answers: list[int] | None = None, body: str = "",
                 delay: float = 0.0, upstream: str | None = None) -> None:
        self.answers = list(answers or [])
        self.body = body
        self.delay = delay
        self.upstream = upstream
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.session = aiohttp.ClientSession()

    async def _stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.received.append(Received(request.method, request.path_qs,
                                          dict(request.headers), body, time.time()))
            status = self.answers.pop(0) if self.answers else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.upstream is not None:
            async with self.session.get(self.upstream + request.path_qs) as resp:
                return web.Response(body=await resp.read(), status=resp.status,
                                    content_type=resp.content_type)
        return web.Response(status=status, text=self.body)

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path.startswith(path)]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.requests())} of {count} requests arrived")
            time.sleep(0.02)
        return self.requests()
