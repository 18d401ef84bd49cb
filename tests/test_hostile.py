"""What the reliability probe found at the HTTP edge, each over a raw socket against a real
``lockd serve``: never a 500, never a traceback in the log."""

from __future__ import annotations

import json
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import Lockd
from tests.httpcall import lock

BODY = b'{"client_params":{"id":"n1","group":"workers"}}'
FLEETLOCK = b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n"


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def exchange(url: str, data: bytes, then: bytes | None = None) -> list[bytes]:
    """Send ``data``; read one answer; if ``then``, send it and read another."""
    answers = []
    with socket.create_connection(_addr(url)) as sock:
        sock.settimeout(5)
        sock.sendall(data)
        answers.append(sock.recv(65536))
        if then is not None:
            sock.sendall(then)
            answers.append(sock.recv(65536))
    return answers


def status_and_json(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Lockd]:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    lockd = Lockd(tmp_path, "--backend", "memory://", "--group", "workers=2",
                  "--admin-token-file", str(token)).start()
    try:
        yield lockd
    finally:
        lockd.stop()
        assert "Traceback" not in lockd.proc.output()  # type: ignore[union-attr]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_is_a_400(server: Lockd, encoding: str) -> None:
    garbage = b"this is not compressed"
    request = FLEETLOCK + (
        f"Content-Encoding: {encoding}\r\nContent-Length: {len(garbage)}\r\n\r\n".encode()
    )
    status, doc = status_and_json(exchange(server.url, request + garbage)[0])
    assert status == 400 and doc["kind"] == "invalid_request"


def test_a_body_that_decodes_is_served(server: Lockd) -> None:
    packed = zlib.compress(BODY)
    request = FLEETLOCK + (
        f"Content-Encoding: deflate\r\nContent-Length: {len(packed)}\r\n\r\n".encode()
    )
    assert exchange(server.url, request + packed)[0].startswith(b"HTTP/1.1 200")


def test_expect_continue_with_an_oversized_body_gets_413_without_100(server: Lockd) -> None:
    request = FLEETLOCK + b"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
    status, doc = status_and_json(exchange(server.url, request)[0])
    assert status == 413 and doc["kind"] == "body_too_large"


def test_expect_continue_within_the_limit_continues(server: Lockd) -> None:
    request = FLEETLOCK + f"Expect: 100-continue\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    first, second = exchange(server.url, request, then=BODY)
    assert first.startswith(b"HTTP/1.1 100 Continue") and second.startswith(b"HTTP/1.1 200")


def test_a_non_utf8_token_is_a_401(server: Lockd) -> None:
    request = (b"GET /api/v1/groups HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Authorization: Bearer s3cret-\xff\xfe\r\n\r\n")
    answer = exchange(server.admin_url, request)[0]
    status, doc = status_and_json(answer)
    assert status == 401 and doc["kind"] == "unauthorized"
    assert b"WWW-Authenticate: Bearer" in answer


def _admin(url: str, method: str, path: str, body: bytes, token: str = "s3cret-token") -> bytes:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return exchange(url, request)[0]


@pytest.mark.parametrize(("body", "status"), [(b"[1,2,3,4]", 400), (b'{"x": 1}', 400),
                                              (b"x" * 1_000_000, 413)])
def test_pause_validates_its_body(server: Lockd, body: bytes, status: int) -> None:
    answer = _admin(server.admin_url, "POST", "/api/v1/groups/workers/pause", body)
    assert status_and_json(answer)[0] == status
    assert lock(server.url, "pre-reboot", "n1", "workers")[0] == 200  # not paused


def test_pause_with_an_empty_object_pauses(server: Lockd) -> None:
    answer = _admin(server.admin_url, "POST", "/api/v1/groups/workers/pause", b"{}")
    assert answer.startswith(b"HTTP/1.1 200")
    assert lock(server.url, "pre-reboot", "n1", "workers")[0] == 423


def test_a_removed_token_file_refuses_clearly_and_logs_once(server: Lockd) -> None:
    (server.tmp / "token").unlink()
    for _ in range(20):
        status, doc = status_and_json(_admin(server.admin_url, "GET", "/api/v1/groups", b""))
        assert status == 401 and "token file" in doc["value"]
    server.wait_for_output("admin token file unreadable")
    out = server.proc.output()  # type: ignore[union-attr]
    assert out.count("admin token file unreadable") == 1
