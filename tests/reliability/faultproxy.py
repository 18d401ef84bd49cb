"""A user-space TCP proxy between lockd and its store, for network faults.

This machine has no ``tc netem`` or firewall tools, so the harness owns the network path:
lockd connects to the proxy, the proxy to the store. Modes, switchable at run time:

- ``pass``: forward both ways;
- ``latency``: delay every chunk, both ways, by a number of seconds;
- ``drop``: close every connection, open or new, at once (the client sees resets/EOF);
- ``blackhole``: accept and read, forward nothing, answer nothing (a silent partition);
- ``reset_mid_response``: forward requests, then reset the client connection (SO_LINGER 0)
  after the first bytes of the next response.

``ThreadedProxy`` runs it on its own event loop in a thread, so synchronous tests and
harness code driving subprocesses can use it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

from bench.procs import free_port

MODES = ("pass", "latency", "drop", "blackhole", "reset_mid_response")


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.mode = "pass"
        self.delay = 0.0
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._close_all()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        self.mode, self.delay = mode, delay
        if mode == "drop":
            self._close_all()

    def _close_all(self) -> None:
        for writer in list(self._conns):
            _reset(writer)
        self._conns.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            _reset(client_w)
            return
        self._conns.add(client_w)
        try:
            if self.mode == "blackhole":
                await self._swallow(client_r)
                return
            try:
                store_r, store_w = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._conns.add(store_w)
            try:
                await asyncio.gather(self._pipe(client_r, store_w, upstream=True),
                                     self._pipe(store_r, client_w, upstream=False))
            finally:
                self._conns.discard(store_w)
                store_w.close()
        finally:
            self._conns.discard(client_w)
            client_w.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "drop":
                    break
                if self.mode == "blackhole":
                    continue  # read and forget: the peer waits forever
                if self.mode == "latency":
                    await asyncio.sleep(self.delay)
                if self.mode == "reset_mid_response" and not upstream:
                    writer.write(data[: max(1, len(data) // 2)])
                    await writer.drain()
                    _reset(writer)
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError, AttributeError):
                pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN: what a crashed peer or a middlebox sends."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class ThreadedProxy:
    """A FaultProxy on its own loop and thread; its methods are safe from any thread."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.proxy = FaultProxy(target_host, target_port, port)
        self.port = self.proxy.port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> ThreadedProxy:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        self._loop.call_soon_threadsafe(self.proxy.set_mode, mode, delay)

    def stop(self) -> None:
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
