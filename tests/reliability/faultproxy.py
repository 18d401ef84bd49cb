"""A user-space TCP proxy that injects network faults, for tests that run lockd against a store.

This machine has no ``tc netem`` and no iptables, so faults between lockd and its store are
made here instead: point lockd at the proxy (``redis://127.0.0.1:<proxy.port>/0``) and the
proxy at the store, then switch modes while the test runs.

Modes (one at a time, for every connection, switchable at any moment):

- ``pass``: forward both ways.
- ``latency(seconds)``: each chunk is forwarded ``seconds`` after it was read, in each
  direction, keeping order and pipelining (a delay line, not a per-chunk sleep that would
  add up). Chunks read before the switch keep the delay they were read with.
- ``drop``: close every connection now and every new one as soon as it is accepted.
- ``blackhole``: silence. New connections are accepted but nothing is read, forwarded or
  answered; on existing ones bytes are read and *held*. Nothing is lost: when the mode
  changes, held bytes are delivered, as TCP would retransmit them after a partition heals.
  So a request sent into the hole may still reach the store later, after the client gave
  up: the "unknown outcome" case a history checker must allow.
- ``reset_mid_response(after_bytes=1)``: requests are forwarded; at the first bytes of a
  response, ``after_bytes`` of them are passed on and the client connection is reset
  (SO_LINGER 0, so the client sees ECONNRESET rather than a clean end). The store has done
  the work; the client cannot know.

``FaultProxy`` is an async context manager for asyncio tests; ``ThreadedFaultProxy`` runs one
on its own event loop in a background thread, for synchronous tests and for lockd running
as a subprocess. Neither imports lockd. Modes are ``Mode`` values or, as the fault harness
passes them, a mode name and a delay: ``set_mode("latency", 0.4)``; ``ThreadedProxy`` is the
harness's name for the threaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

ModeKind = Literal["pass", "latency", "drop", "blackhole", "reset_mid_response"]
MODES: tuple[ModeKind, ...] = ("pass", "latency", "drop", "blackhole", "reset_mid_response")
T = TypeVar("T")

CHUNK = 65536


@dataclass(frozen=True)
class Mode:
    kind: ModeKind = "pass"
    delay: float = 0.0  # latency: seconds added to each chunk, in each direction
    after_bytes: int = 1  # reset_mid_response: response bytes let through before the reset

    def __post_init__(self) -> None:
        if self.kind not in MODES:
            raise ValueError(f"unknown mode {self.kind!r}; use one of {MODES}")
        if self.delay < 0 or self.after_bytes < 0:
            raise ValueError(f"negative delay or byte count: {self}")


PASS = Mode()
DROP = Mode("drop")
BLACKHOLE = Mode("blackhole")


def latency(seconds: float) -> Mode:
    return Mode("latency", delay=seconds)


def reset_mid_response(after_bytes: int = 1) -> Mode:
    return Mode("reset_mid_response", after_bytes=after_bytes)


def as_mode(mode: Mode | str, delay: float = 0.0) -> Mode:
    """A ``Mode`` from either a ``Mode`` or a name (and, for latency, its delay)."""
    if isinstance(mode, Mode):
        return mode
    return Mode(mode, delay=delay if mode == "latency" else 0.0)  # type: ignore[arg-type]


@dataclass
class Stats:
    accepted: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    resets: int = 0


@dataclass(eq=False)
class _Link:
    """One client connection and, once made, its connection to the target."""

    client: asyncio.StreamWriter
    handler: asyncio.Task[Any] | None = None
    target: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        # abort, not close: a fault is immediate, it does not flush what is buffered.
        for w in (self.client, self.target):
            if w is not None:
                w.transport.abort()

    def reset_client(self) -> None:
        sock = self.client.get_extra_info("socket")
        if sock is not None:
            # Linger 0: closing sends RST, so the client sees ECONNRESET, not a clean EOF.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


# A queued chunk: when it may be forwarded, and the bytes (b"" is EOF) or the read's error.
_Item = tuple[float, bytes | BaseException]


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target_host:target_port`` with switchable faults.

    Use ``async with FaultProxy(host, port) as proxy`` (or ``start``/``stop``) and switch
    with ``await proxy.set_mode(...)`` or the shorthands. Everything runs on the event loop
    that started it; from another thread use ``ThreadedFaultProxy``.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0, *,
                 host: str = "127.0.0.1") -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host, self._want_port = host, port
        self.port = 0
        self.stats = Stats()
        self._mode = PASS
        self._changed = asyncio.Event()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._stopping = False

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def connections(self) -> int:
        return len(self._links)

    async def start(self) -> FaultProxy:
        # Bind port 0 unless told otherwise: the kernel picks a free port, with no race.
        self._server = await asyncio.start_server(self._handle, self.host, self._want_port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Wake handlers waiting in a blackhole (no closed socket would end that wait) and
        # let every handler finish by itself: cancelling asyncio's own handler task makes
        # Python 3.11 log a spurious CancelledError. Only our pump tasks are cancelled.
        self._stopping = True
        self._wake()
        handlers = []
        for link in list(self._links):
            link.close()
            for t in link.tasks:
                t.cancel()
            if link.handler is not None and link.handler is not asyncio.current_task():
                handlers.append(link.handler)
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
        await self._server.wait_closed()
        self._server = None
        self._stopping = False

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def set_mode(self, mode: Mode | str, delay: float = 0.0) -> None:
        """Switch every connection to ``mode``; on return, ``drop`` has closed them all."""
        self._mode = as_mode(mode, delay)
        self._wake()
        if self._mode.kind == "drop":
            for link in list(self._links):
                link.close()
                self._links.discard(link)  # closed now; its handler finishes on its own

    async def pass_through(self) -> None:
        await self.set_mode(PASS)

    async def latency(self, seconds: float) -> None:
        await self.set_mode(latency(seconds))

    async def drop(self) -> None:
        await self.set_mode(DROP)

    async def blackhole(self) -> None:
        await self.set_mode(BLACKHOLE)

    async def reset_mid_response(self, after_bytes: int = 1) -> None:
        await self.set_mode(reset_mid_response(after_bytes))

    # ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        # Wake whatever waits on the old mode (a blackhole); they re-read the new one.
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def _unblocked(self) -> None:
        while self._mode.kind == "blackhole" and not self._stopping:
            await self._changed.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(writer, asyncio.current_task())
        self._links.add(link)
        try:
            await self._serve(link, reader)
        except (ConnectionError, OSError):
            pass  # either side went away: the link is closed below
        finally:
            link.close()
            self._links.discard(link)

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        await self._unblocked()  # a new connection in a blackhole: accepted, then silence
        if self._mode.kind == "drop" or self._stopping:
            return
        target_reader, link.target = await asyncio.open_connection(
            self.target_host, self.target_port)
        link.tasks = [
            asyncio.create_task(self._pump(reader, link.target, link, to_client=False)),
            asyncio.create_task(self._pump(target_reader, link.client, link, to_client=True)),
        ]
        done, pending = await asyncio.wait(link.tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                return  # a failed side ends the link; the error is the fault, not a bug

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link,
                    to_client: bool) -> None:
        """Forward one direction through a delay line: a reader fills it, this drains it."""
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        feeder = asyncio.create_task(self._feed(src, queue))
        try:
            while True:
                due, data = await queue.get()
                await self._unblocked()
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                if isinstance(data, BaseException):
                    raise data
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()  # pass a half-close on: the other way may go on
                    return
                if to_client and self._mode.kind == "reset_mid_response":
                    await self._reset(link, dst, data)
                    return
                dst.write(data)
                await dst.drain()
                self._count(to_client, len(data))
        finally:
            feeder.cancel()

    async def _feed(self, src: asyncio.StreamReader, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data: bytes | BaseException = await src.read(CHUNK)
            except (ConnectionError, OSError) as e:
                data = e
            mode = self._mode
            delay = mode.delay if mode.kind == "latency" else 0.0
            queue.put_nowait((loop.time() + delay, data))
            if not data or isinstance(data, BaseException):
                return

    async def _reset(self, link: _Link, dst: asyncio.StreamWriter, data: bytes) -> None:
        first = data[: self._mode.after_bytes]
        if first:
            dst.write(first)
            await dst.drain()
            self._count(True, len(first))
        self.stats.resets += 1
        link.reset_client()

    def _count(self, to_client: bool, n: int) -> None:
        if to_client:
            self.stats.bytes_to_client += n
        else:
            self.stats.bytes_to_target += n


class ThreadedFaultProxy:
    """A ``FaultProxy`` on its own event loop in a daemon thread, driven synchronously.

    ``with ThreadedFaultProxy(host, port) as proxy: ... proxy.blackhole() ...``. Each mode
    switch returns once the proxy has applied it.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0, *,
                 host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy",
                                        daemon=True)
        self._timeout = timeout
        self.proxy = self._build(target_host, target_port, host, port)

    def _build(self, target_host: str, target_port: int, host: str, port: int) -> FaultProxy:
        # FaultProxy makes an asyncio.Event; build it on its own loop's thread, to be safe.
        async def build() -> FaultProxy:
            return FaultProxy(target_host, target_port, port, host=host)

        self._thread.start()
        return self._call(build())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def address(self) -> tuple[str, int]:
        return self.proxy.address

    @property
    def stats(self) -> Stats:
        return self.proxy.stats

    def start(self) -> ThreadedFaultProxy:
        self._call(self.proxy.start())
        return self

    def stop(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        self._loop.close()

    def __enter__(self) -> ThreadedFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: Mode | str, delay: float = 0.0) -> None:
        """Switch, and return once the proxy has (unlike a fire-and-forget switch, a fault's
        recorded start is then never earlier than the fault itself)."""
        self._call(self.proxy.set_mode(mode, delay))

    def pass_through(self) -> None:
        self.set_mode(PASS)

    def latency(self, seconds: float) -> None:
        self.set_mode(latency(seconds))

    def drop(self) -> None:
        self.set_mode(DROP)

    def blackhole(self) -> None:
        self.set_mode(BLACKHOLE)

    def reset_mid_response(self, after_bytes: int = 1) -> None:
        self.set_mode(reset_mid_response(after_bytes))


#: The fault harness's name for the threaded proxy.
ThreadedProxy = ThreadedFaultProxy
