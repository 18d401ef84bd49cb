"""HTTP framing against a real ``lockd serve``: bodies that arrive in pieces, bodies over the
limit, and malformed HTTP (oversized header, bad chunk size, garbage request line).

Every request here is written byte for byte over a raw socket (tests/rawhttp.py), in as many
writes as the case needs, with a pause between them so that each leaves as its own TCP
segment: a body split in two must be read whole, not just its first piece.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import Lockd, start_lockd
from lockd.http import RateLimitedLog
from tests.httpcall import call
from tests.rawhttp import RawResponse, exchange

PAUSE = 0.25  # between two writes: long enough that they are two segments
ID_GROUP = {"client_params": {"id": "node-split", "group": "workers"}}


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def head(method: str, path: str, url: str, *headers: str) -> bytes:
    host, port = host_port(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def send(url: str, parts: list[bytes], pause: float = PAUSE) -> RawResponse:
    return asyncio.run(exchange(*host_port(url), parts, pause=pause))


def assert_error(resp: RawResponse, status: int, kind: str) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    doc = resp.json()
    assert doc["kind"] == kind and isinstance(doc["value"], str) and doc["value"], doc
    return doc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lockd]:
    lockd = start_lockd(tmp_path_factory.mktemp("framing"), "memory")
    try:
        yield lockd
    finally:
        lockd.stop()


def holders(server: Lockd, group: str = "workers") -> list[str]:
    status, doc = call(server.admin_url, "GET", f"/api/v1/groups/{group}")
    assert status == 200, doc
    return [h["id"] for h in doc["holders"]]


def release(server: Lockd) -> None:
    status, _ = call(
        server.url, "POST", "/v1/steady-state", ID_GROUP, headers={"fleet-lock-protocol": "true"}
    )
    assert status == 200


# Bodies in pieces


def test_fleetlock_body_in_two_segments(server: Lockd) -> None:
    body = json.dumps(ID_GROUP, indent=2).encode()  # zincati's pretty-printed shape
    parts = [
        head("POST", "/v1/pre-reboot", server.url, "fleet-lock-protocol: true",
             f"Content-Length: {len(body)}") + body[:7],
        body[7:],
    ]
    resp = send(server.url, parts)
    assert resp.status == 200, resp.body
    assert resp.json() == {"outcome": "granted"}
    assert "node-split" in holders(server)
    release(server)


def test_fleetlock_body_in_two_chunks(server: Lockd) -> None:
    body = json.dumps(ID_GROUP).encode()
    parts = [
        head("POST", "/v1/pre-reboot", server.url, "Fleet-Lock-Protocol: true",
             "Transfer-Encoding: chunked"),
        chunk(body[:20]),
        chunk(body[20:]) + b"0\r\n\r\n",
    ]
    resp = send(server.url, parts)
    assert resp.status == 200, resp.body
    assert "node-split" in holders(server)
    release(server)


def test_admin_body_in_two_segments_and_two_chunks(server: Lockd) -> None:
    body = b'{"slots": 3}'
    parts = [
        head("PUT", "/api/v1/groups/workers/slots", server.admin_url,
             "Content-Type: application/json", f"Content-Length: {len(body)}") + body[:4],
        body[4:],
    ]
    resp = send(server.admin_url, parts)
    assert resp.status == 200, resp.body
    assert resp.json()["slots"] == 3

    body = b'{"slots": 2}'
    parts = [
        head("PUT", "/api/v1/groups/workers/slots", server.admin_url,
             "Content-Type: application/json", "Transfer-Encoding: chunked"),
        chunk(body[:5]),
        chunk(body[5:]) + b"0\r\n\r\n",
    ]
    resp = send(server.admin_url, parts)
    assert resp.status == 200, resp.body
    assert resp.json()["slots"] == 2


# Bodies over the limit


def test_content_length_over_limit_is_413_before_the_body(server: Lockd) -> None:
    # Only the head is sent: the answer must not wait for 10 kB that never come.
    parts = [head("POST", "/v1/pre-reboot", server.url, "fleet-lock-protocol: true",
                  "Content-Length: 10000")]
    assert_error(send(server.url, parts), 413, "body_too_large")
    parts = [head("PUT", "/api/v1/groups/workers/slots", server.admin_url,
                  "Content-Type: application/json", "Content-Length: 10000")]
    assert_error(send(server.admin_url, parts), 413, "body_too_large")


def test_chunked_over_limit_is_413_without_reading_it_all(server: Lockd) -> None:
    # 3 x 2000 bytes > 4096, and no last chunk: lockd must answer without the rest.
    piece = chunk(b" " * 2000)
    parts = [head("POST", "/v1/pre-reboot", server.url, "fleet-lock-protocol: true",
                  "Transfer-Encoding: chunked"), piece, piece, piece]
    assert_error(send(server.url, parts), 413, "body_too_large")
    parts = [head("PUT", "/api/v1/groups/workers/slots", server.admin_url,
                  "Content-Type: application/json", "Transfer-Encoding: chunked"),
             piece, piece, piece]
    assert_error(send(server.admin_url, parts), 413, "body_too_large")


def test_body_at_the_limit_in_many_pieces(server: Lockd) -> None:
    body = json.dumps(ID_GROUP).encode()
    body = body[:-1] + b" " * (4096 - len(body)) + b"}"  # exactly 4096 bytes
    assert len(body) == 4096
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    parts = [head("POST", "/v1/pre-reboot", server.url, "fleet-lock-protocol: true",
                  "Transfer-Encoding: chunked"), *map(chunk, pieces), b"0\r\n\r\n"]
    resp = send(server.url, parts, pause=0.05)
    assert resp.status == 200, resp.body
    release(server)


# Malformed HTTP

FLEETLOCK_HEAD = b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n"


def admin_head(url: str) -> bytes:
    """The head of an admin request that reads its body, with a Host the listener serves."""
    host, port = host_port(url)
    return (
        f"PUT /api/v1/groups/workers/slots HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()


def malformed(case: str, start: bytes) -> list[bytes]:
    """The bytes of one malformed request (``start``: its request line and first headers),
    in the writes they are sent in."""
    return {
        "oversized header": [
            start + b"X-Big: " + b"a" * 10_000 + b"\r\nContent-Length: 2\r\n\r\n{}"
        ],
        "bad chunk size": [start + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"],
        # the head first, the broken body later: the request is being served when it breaks
        "bad chunk size, separate segment": [
            start + b"Transfer-Encoding: chunked\r\n\r\n",
            b"zz\r\n{}\r\n0\r\n\r\n",
        ],
        "garbage request line": [b"HELLO WORLD\r\n\r\n"],
        "tls on the http port": [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40],
        "bad http version": [b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"],
    }[case]


CASES = [
    "oversized header",
    "bad chunk size",
    "bad chunk size, separate segment",
    "garbage request line",
    "tls on the http port",
    "bad http version",
]


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Lockd]:
    """lockd with text logs (a traceback shows as "Traceback"), on memory://."""
    lockd = Lockd(tmp_path, "--backend", "memory://", "--group", "workers=2").start()
    try:
        yield lockd
    finally:
        lockd.stop()


def warnings(lockd: Lockd) -> list[str]:
    assert lockd.proc is not None
    return [line for line in lockd.proc.output().splitlines() if " WARNING " in line]


@pytest.mark.parametrize("case", CASES)
def test_malformed_http_gets_json_400_and_one_quiet_warning(fresh: Lockd, case: str) -> None:
    for url, start in ((fresh.url, FLEETLOCK_HEAD), (fresh.admin_url, admin_head(fresh.admin_url))):
        started = time.monotonic()
        resp = send(url, malformed(case, start))
        assert time.monotonic() - started < 5, "lockd took too long to answer"
        doc = assert_error(resp, 400, "invalid_request")
        assert "\n" not in doc["value"] and len(doc["value"]) <= 300, doc
    # well-formed requests on the same listeners still work
    status, _ = call(fresh.url, "POST", "/v1/pre-reboot", ID_GROUP,
                     headers={"fleet-lock-protocol": "true"})
    assert status == 200
    assert call(fresh.admin_url, "GET", "/healthz")[0] == 200
    fresh.wait_for_output("malformed HTTP request")
    out = fresh.proc.output() if fresh.proc else ""
    assert "Traceback" not in out and " ERROR " not in out, out
    lines = [w for w in warnings(fresh) if "malformed HTTP request" in w]
    assert 1 <= len(lines) <= 2, lines  # the second was held back (rate limit)
    assert all(len(w) < 500 for w in lines), lines


def test_malformed_flood_is_rate_limited(fresh: Lockd) -> None:
    cases = [malformed(case, FLEETLOCK_HEAD) for case in CASES]

    async def flood() -> list[RawResponse]:
        host, port = host_port(fresh.url)
        return [await exchange(host, port, cases[i % len(cases)], pause=0.01)
                for i in range(50)]

    for resp in asyncio.run(flood()):
        assert_error(resp, 400, "invalid_request")
    fresh.wait_for_output("malformed HTTP request")
    time.sleep(0.3)
    out = fresh.proc.output() if fresh.proc else ""
    assert "Traceback" not in out and " ERROR " not in out, out[-3000:]
    lines = [w for w in warnings(fresh) if "malformed HTTP request" in w]
    assert 1 <= len(lines) <= 3, lines
    # what was held back is counted, not lost: one summary line says how many
    summary = lockd_summary(fresh, timeout=15)
    held = int(summary.group("n"))
    assert 1 <= held <= 49, summary.group(0)


def lockd_summary(lockd: Lockd, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"(?P<n>\d+) more malformed HTTP requests? (was|were) held back")
    while time.monotonic() < deadline:
        for line in warnings(lockd):
            if match := pattern.search(line):
                return match
        time.sleep(0.1)
    raise AssertionError(f"no summary line:\n{warnings(lockd)}")


async def test_rate_limited_log_counts_what_it_holds_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("lockd.test.ratelimit")
    limited = RateLimitedLog(logger, "odd things", every=0.3)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for i in range(20):
            limited.warning(f"odd thing {i}")
        assert [r.getMessage() for r in caplog.records] == ["odd thing 0"]
        await asyncio.sleep(0.5)  # the period ends: one line says what was held back
        assert [r.getMessage() for r in caplog.records][1:] == [
            "19 more odd things were held back in the last 0.3s; the last: odd thing 19"
        ]
        limited.warning("odd thing 20")  # within the next period: held back again
        await asyncio.sleep(0.5)
        assert caplog.records[-1].getMessage() == (
            "1 more odd thing was held back in the last 0.3s; the last: odd thing 20"
        )
        await asyncio.sleep(0.4)
        limited.warning("odd thing 21")  # a quiet period passed: logged at once
        assert caplog.records[-1].getMessage() == "odd thing 21"
        assert len(caplog.records) == 4
