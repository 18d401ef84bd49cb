"""Hostile and idle clients cannot tire lockd: each bound is tested on a real ``lockd serve``
over raw sockets (no client library would send these)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.procs import Lockd, find_binary
from tests.httpcall import call, lock
from tests.test_tls import make_cert

BODY = b'{"client_params":{"id":"n1","group":"workers"}}'


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").removeprefix("https://").rstrip("/").rpartition(":")
    return host, int(port)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading any answer first)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Lockd]:
    server = Lockd(
        tmp_path, "--backend", "memory://", "--group", "workers=2",
        "--set", "service.idle_timeout_s=1", "--set", "service.body_timeout_s=1",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_silent_connection_is_closed(quick: Lockd) -> None:
    with socket.create_connection(_addr(quick.url)) as sock:
        assert _closed_within(sock, 5)


def test_a_trickled_header_is_cut_off(quick: Lockd) -> None:
    with socket.create_connection(_addr(quick.url)) as sock:
        started = time.monotonic()
        head = b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
        try:
            for byte in head:  # about 4 s of header at 50 bytes/s: never complete
                sock.send(bytes([byte]))
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _closed_within(sock, 5)
        assert time.monotonic() - started < 6


def test_an_idle_keep_alive_is_closed_after_its_answer(quick: Lockd) -> None:
    with socket.create_connection(_addr(quick.url)) as sock:
        sock.sendall(
            b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
        )
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_within(sock, 5)


def test_a_trickled_body_gets_408_json(quick: Lockd) -> None:
    with socket.create_connection(_addr(quick.url)) as sock:
        sock.sendall(
            b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10]
        )
        sock.settimeout(5)
        answer = sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["kind"] == "request_timeout"
    assert lock(quick.url, "pre-reboot", "n1", "workers")[0] == 200  # nothing was applied


def test_connections_past_the_cap_are_refused_cleanly(tmp_path: Path) -> None:
    server = Lockd(tmp_path, "--backend", "memory://", "--group", "workers=2",
                   "--set", "service.max_connections=5").start()
    try:
        held = [socket.create_connection(_addr(server.url)) for _ in range(5)]
        try:
            time.sleep(0.3)  # let lockd register them
            with socket.create_connection(_addr(server.url)) as extra:
                extra.settimeout(5)
                answer = extra.recv(65536)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503")
            assert json.loads(body)["kind"] == "too_many_connections"
            # The admin listener has room of its own.
            assert call(server.admin_url, "GET", "/healthz")[0] == 200
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)
        assert lock(server.url, "pre-reboot", "n1", "workers")[0] == 200
        server.wait_for_output("connections open, its limit")
    finally:
        server.stop()
    assert "Traceback" not in server.proc.output()  # type: ignore[union-attr]


def test_a_low_descriptor_limit_still_serves_the_admin_listener(tmp_path: Path) -> None:
    """Under a 256-descriptor limit, 400 idle connections leave lockd answering: the
    FleetLock listener refuses what it cannot hold, the admin listener keeps room."""
    prlimit = find_binary("prlimit", "util-linux")
    server = Lockd(tmp_path, "--backend", "memory://", "--group", "workers=2",
                   wrapper=[prlimit, "--nofile=256:256", "--"]).start()
    held: list[socket.socket] = []
    try:
        try:
            for _ in range(400):
                held.append(socket.create_connection(_addr(server.url)))
            time.sleep(0.5)
            assert call(server.admin_url, "GET", "/healthz")[0] == 200
            status, body = call(server.admin_url, "GET", "/api/v1/groups")
            assert status == 200, body
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)
        assert lock(server.url, "pre-reboot", "n1", "workers")[0] == 200
    finally:
        server.stop()
    out = server.proc.output()  # type: ignore[union-attr]
    assert "Traceback" not in out and "connections open, its limit" in out



def _ask(sock: socket.socket) -> bytes:
    """A FleetLock pre-reboot on ``sock``; the status line of its answer."""
    sock.sendall(b"POST /v1/pre-reboot HTTP/1.1\r\nHost: lockd\r\nfleet-lock-protocol: true\r\n"
                 b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    sock.settimeout(5)
    return sock.recv(65536).partition(b"\r\n")[0]


def _cap_is_exactly(url: str, cap: int, wrap: Callable[[socket.socket], socket.socket]) -> None:
    """``cap`` connections are accepted and served at once, and the next one is refused."""
    held = [wrap(socket.create_connection(_addr(url), timeout=5)) for _ in range(cap)]
    try:
        for sock in held:  # every one was accepted: none of the cap leaked
            assert _ask(sock).split()[1] in (b"200", b"423")
        with wrap(socket.create_connection(_addr(url), timeout=5)) as extra:
            extra.settimeout(5)
            # none was counted twice: the cap is still full
            assert extra.recv(65536).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()


def test_every_way_a_connection_ends_frees_its_place_under_the_cap(tmp_path: Path) -> None:
    """The cap counts open connections (issue #15: a count kept by the handlers, not a
    list of them built per new connection): closed by the client, answered 400 and closed
    by lockd, closed by the idle timeout, or refused at the cap, each gives its place back
    exactly once, round after round."""
    server = Lockd(tmp_path, "--backend", "memory://", "--group", "workers=2",
                   "--set", "service.max_connections=3",
                   "--set", "service.idle_timeout_s=1").start()
    url = server.url
    try:
        for _ in range(3):
            for _ in range(3):  # the client asks and hangs up
                with socket.create_connection(_addr(url), timeout=5) as sock:
                    assert _ask(sock).split()[1] in (b"200", b"423")
            malformed = [socket.create_connection(_addr(url), timeout=5) for _ in range(3)]
            for sock in malformed:  # lockd answers 400 and closes
                sock.sendall(b"NOT HTTP\r\n\r\n")
                assert sock.recv(65536).split(b" ")[1] == b"400"
                assert _closed_within(sock, 5)
                sock.close()
            silent = [socket.create_connection(_addr(url), timeout=5) for _ in range(3)]
            for sock in silent:  # lockd's idle timeout closes them
                assert _closed_within(sock, 5)
                sock.close()
            time.sleep(0.3)  # let lockd see every close
            _cap_is_exactly(url, 3, lambda sock: sock)  # with refusals past the cap
            time.sleep(0.3)
        _cap_is_exactly(url, 3, lambda sock: sock)
    finally:
        server.stop()
    assert "Traceback" not in server.proc.output()  # type: ignore[union-attr]


def test_a_failed_tls_handshake_takes_no_place_under_the_cap(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "lockd")
    server = Lockd(tmp_path, "--backend", "memory://", "--group", "workers=2",
                   "--set", "service.max_connections=2", "--set", "service.tls=true",
                   "--set", f"service.tls_cert={cert}", "--set", f"service.tls_key={key}").start()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        for _ in range(5):  # plain HTTP to the TLS listener: the handshake fails
            with socket.create_connection(_addr(server.url), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert _closed_within(sock, 5)
        time.sleep(0.3)
        _cap_is_exactly(server.url, 2, ctx.wrap_socket)
    finally:
        server.stop()
    assert "Traceback" not in server.proc.output()  # type: ignore[union-attr]
