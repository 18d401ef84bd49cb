"""The fault proxy on real sockets: an echo server behind it, a client in front."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from tests.reliability.faultproxy import FaultProxy, Mode, ThreadedFaultProxy, ThreadedProxy

QUIET = 0.3  # how long "silent" must stay silent in these tests


@dataclass
class Echo:
    """An echo server that remembers what reached it."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    state = Echo()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while data := await reader.read(65536):
                state.received += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The proxy ended the connection: EOF or a reset, promptly, with nothing echoed."""
    try:
        assert await asyncio.wait_for(reader.read(100), 2) == b""
    except ConnectionResetError:
        pass


async def test_pass_forwards_both_ways_and_half_closes(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"hello") == b"hello"
    big = bytes(range(256)) * 4096  # 1 MiB, several chunks each way
    assert await roundtrip(reader, writer, big) == big
    writer.write_eof()  # the echo server sees EOF, closes, and so do we
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert proxy.stats.bytes_to_target == proxy.stats.bytes_to_client == 5 + len(big)


async def test_latency_delays_each_direction_without_adding_up(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"warm")
    await proxy.latency(0.15)  # switched on an open connection
    start = time.monotonic()
    assert await roundtrip(reader, writer, b"x") == b"x"
    assert 0.3 <= time.monotonic() - start < 1.0  # once each way
    # Five chunks sent together arrive after one delay each way, not five.
    start = time.monotonic()
    for i in range(5):
        writer.write(b"%d" % i)
        await writer.drain()
        await asyncio.sleep(0.01)
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"01234"
    assert time.monotonic() - start < 0.3 + 0.05 * 5 + 0.3
    await proxy.pass_through()
    start = time.monotonic()
    await roundtrip(reader, writer, b"y")
    assert time.monotonic() - start < 0.1
    writer.close()


async def test_drop_closes_open_and_new_connections(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"before")
    await proxy.drop()
    await assert_closed(reader)
    assert proxy.connections == 0
    reader2, writer2 = await connect(proxy)  # accepted, then closed at once
    writer2.write(b"lost")
    await assert_closed(reader2)
    assert bytes(echo.received) == b"before"
    await proxy.pass_through()
    reader3, writer3 = await connect(proxy)
    assert await roundtrip(reader3, writer3, b"after") == b"after"
    for w in (writer, writer2, writer3):
        w.close()


async def test_blackhole_is_silent_and_holds_bytes_until_it_heals(proxy: FaultProxy,
                                                                  echo: Echo) -> None:
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"a")
    await proxy.blackhole()
    writer.write(b"held")
    await writer.drain()
    reader2, writer2 = await connect(proxy)  # a new connection is accepted, then silence
    writer2.write(b"new")
    await writer2.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), QUIET)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader2.read(100), QUIET)
    assert bytes(echo.received) == b"a"  # nothing reached the server
    assert echo.connections == 1  # not even the new connection
    await proxy.pass_through()
    # Healed: what was sent into the hole arrives late, as TCP would retransmit it.
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    assert await asyncio.wait_for(reader2.readexactly(3), 5) == b"new"
    writer.close()
    writer2.close()


async def test_reset_mid_response_after_the_server_did_the_work(proxy: FaultProxy,
                                                                echo: Echo) -> None:
    await proxy.reset_mid_response(after_bytes=3)
    reader, writer = await connect(proxy)
    request = b"SET key value\r\n" * 10
    writer.write(request)
    await writer.drain()
    got = b""
    with pytest.raises(ConnectionResetError):  # a reset (SO_LINGER 0), not a clean EOF
        while chunk := await asyncio.wait_for(reader.read(100), 5):
            got += chunk
    assert len(got) <= 3
    for _ in range(50):  # the request reached the server in full: it did the work
        if len(echo.received) == len(request):
            break
        await asyncio.sleep(0.01)
    assert bytes(echo.received) == request
    assert proxy.stats.resets == 1
    writer.close()


async def test_unreachable_target_closes_the_client(echo: Echo) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with FaultProxy("127.0.0.1", dead_port) as proxy:
            reader, writer = await connect(proxy)
            await assert_closed(reader)
            writer.close()


async def test_stop_ends_connections_even_in_a_blackhole(echo: Echo) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"a")
    await proxy.blackhole()
    _, writer2 = await connect(proxy)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(proxy.stop(), 5)
    await assert_closed(reader)
    assert proxy.connections == 0
    writer.close()
    writer2.close()


def test_mode_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Mode("partition")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Mode("latency", delay=-1)


# --------------------------------------------------------------------------------------------
# From synchronous code, with the proxy on its own thread


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def sync_echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _sync_roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_threaded_proxy_is_driven_from_sync_code(sync_echo: int) -> None:
    with ThreadedFaultProxy("127.0.0.1", sync_echo) as proxy:
        with socket.create_connection(proxy.address, timeout=5) as sock:
            assert _sync_roundtrip(sock, b"ping") == b"ping"
            proxy.blackhole()
            sock.settimeout(QUIET)
            sock.sendall(b"held")
            with pytest.raises(TimeoutError):
                sock.recv(100)
            sock.settimeout(5)
            proxy.pass_through()
            assert _sync_roundtrip(sock, b"") == b"" and sock.recv(100) == b"held"
            proxy.latency(0.1)
            start = time.monotonic()
            assert _sync_roundtrip(sock, b"slow") == b"slow"
            assert time.monotonic() - start >= 0.2
            proxy.drop()
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        proxy.pass_through()
        with socket.create_connection(proxy.address, timeout=5) as sock:
            assert _sync_roundtrip(sock, b"again") == b"again"
        assert proxy.stats.accepted == 2


def test_mode_names_as_the_fault_harness_passes_them(sync_echo: int) -> None:
    proxy = ThreadedProxy("127.0.0.1", sync_echo).start()  # start() returns the proxy
    try:
        with socket.create_connection(proxy.address, timeout=5) as sock:
            proxy.set_mode("latency", 0.1)
            assert proxy.proxy.mode == Mode("latency", delay=0.1)
            start = time.monotonic()
            assert _sync_roundtrip(sock, b"slow") == b"slow"
            assert time.monotonic() - start >= 0.2
            proxy.set_mode("pass")
            assert _sync_roundtrip(sock, b"fast") == b"fast"
        with pytest.raises(ValueError, match="unknown mode"):
            proxy.set_mode("partition")
    finally:
        proxy.stop()
