"""The FleetLock HTTP surface: status codes, error bodies, and a fuzz of what clients send."""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from lockd.config import Settings
from lockd.frontend import create_app
from tests.rawhttp import request
from tests.threaded import ThreadedLockd

H = {"fleet-lock-protocol": "true"}


def body(id_: Any = "node1", group: Any = "default") -> bytes:
    return json.dumps({"client_params": {"id": id_, "group": group}}).encode()


@pytest.fixture
async def server(aiohttp_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(backend=f"sqlite://{tmp_path / 'l.db'}", groups={"workers": 2})
    return await aiohttp_server(create_app(settings))


async def post(server, path: str, data: bytes, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return await request(
        server.host, server.port, "POST", path, H if headers is None else headers, data
    )


def assert_error(resp, status: int, kind: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == status, resp.body
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["kind"] == kind and isinstance(doc["value"], str) and doc["value"]


async def test_header_name_is_case_insensitive(server) -> None:  # type: ignore[no-untyped-def]
    resp = await post(server, "/v1/pre-reboot", body(), {"FLEET-LOCK-PROTOCOL": "true"})
    assert resp.status == 200


async def test_wrong_method_is_405_json(server) -> None:  # type: ignore[no-untyped-def]
    for method in ("GET", "PUT", "DELETE"):
        resp = await request(server.host, server.port, method, "/v1/pre-reboot", H, b"")
        assert_error(resp, 405, "method_not_allowed")
        assert resp.headers["allow"] == "POST"


async def test_unknown_path_is_404_json(server) -> None:  # type: ignore[no-untyped-def]
    for path in (
        "/v2/pre-reboot",
        "/v1/pre-reboot/",
        "/",
        "/x/v1/pre-reboot",
        "///v1/steady-state",
    ):
        assert_error(await post(server, path, body()), 404, "not_found")


async def test_body_over_4k_is_413(server) -> None:  # type: ignore[no-untyped-def]
    big = body(id_="x" * 5000)
    assert_error(await post(server, "/v1/pre-reboot", big), 413, "body_too_large")
    # Without a Content-Length (chunked), the limit still holds.
    chunk = hex(len(big))[2:].encode() + b"\r\n" + big + b"\r\n0\r\n\r\n"
    import asyncio

    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunk
    )
    raw = await reader.read()
    writer.close()
    assert raw.startswith(b"HTTP/1.1 413") and b"body_too_large" in raw


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "invalid_body"),
        (b"\xff\xfe\x00", "invalid_body"),
        (b"[" * 2000 + b"]" * 2000, "invalid_body"),
        (
            b'{"client_params": {"id": ' + b"9" * 3000 + b', "group": "default"}}',
            "invalid_client_identity",
        ),
        (b'{"client_params": null}', "invalid_body"),
        (b'{"client_params": {"group": "default"}}', "invalid_client_identity"),
        (body(id_=None), "invalid_client_identity"),
        (body(id_=["a"]), "invalid_client_identity"),
        (body(id_="a\nb"), "invalid_client_identity"),
        (body(id_="x" * 257), "invalid_client_identity"),
        (body(group=None), "invalid_group"),
        (body(group="a/b"), "invalid_group"),
        (body(group="ünïcode"), "invalid_group"),
        (body(group="g" * 257), "invalid_group"),
    ],
)
async def test_bad_bodies_are_400(server, data: bytes, kind: str) -> None:  # type: ignore[no-untyped-def]
    assert_error(await post(server, "/v1/pre-reboot", data), 400, kind)


async def test_full_and_strict_groups(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(backend="memory://", groups={"workers": 1}, strict_groups=True)
    server = await aiohttp_server(create_app(settings))
    assert (await post(server, "/v1/pre-reboot", body("a", "workers"))).status == 200
    assert_error(
        await post(server, "/v1/pre-reboot", body("b", "workers")),
        423,
        "failed_lock_semaphore_full",
    )
    assert_error(await post(server, "/v1/pre-reboot", body("a", "other")), 404, "unknown_group")
    assert_error(await post(server, "/v1/steady-state", body("a", "other")), 404, "unknown_group")


async def test_paused_group_refuses_new_holders(server) -> None:  # type: ignore[no-untyped-def]
    from lockd.http import SERVICE

    assert (await post(server, "/v1/pre-reboot", body("a", "workers"))).status == 200
    await server.app[SERVICE].set_paused("workers", True)
    assert (await post(server, "/v1/pre-reboot", body("a", "workers"))).status == 200
    assert_error(
        await post(server, "/v1/pre-reboot", body("b", "workers")), 423, "failed_lock_group_paused"
    )


async def test_healthz_and_readyz(server) -> None:  # type: ignore[no-untyped-def]
    for path in ("/healthz", "/readyz"):
        resp = await request(server.host, server.port, "GET", path, {}, b"")
        assert resp.status == 200


async def test_locked_store_gives_503_and_loses_nothing(aiohttp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Another process holds the sqlite file's write lock: 503, then recovery, no loss."""
    db = tmp_path / "l.db"
    settings = Settings(backend=f"sqlite://{db}?busy_timeout=0.2")
    server = await aiohttp_server(create_app(settings))
    assert (await post(server, "/v1/pre-reboot", body("a"))).status == 200
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert_error(await post(server, "/v1/steady-state", body("a")), 503, "backend_unavailable")
        resp = await request(server.host, server.port, "GET", "/readyz", {}, b"")
        assert_error(resp, 503, "backend_unavailable")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Nothing was lost: a still holds, b is refused; then a releases for real.
    assert (await post(server, "/v1/pre-reboot", body("b"))).status == 423
    assert (await post(server, "/v1/steady-state", body("a"))).status == 200
    assert (await post(server, "/v1/pre-reboot", body("b"))).status == 200


# A fuzz of everything a client controls: path, headers, body.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
client_params = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.sampled_from(["a", "b", "e0f3745b108f471cbd4883c6fbed8cdd"]),
        "group": json_values | st.sampled_from(["default", "workers", "a.b-c", "bad group"]),
    },
)
bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda p: json.dumps({"client_params": p}).encode(), client_params),
    st.integers(min_value=1, max_value=20000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=10, max_value=6000).map(
        lambda n: b'{"client_params":{"id":' + b"7" * n + b"}}"
    ),
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
headers = st.dictionaries(
    st.sampled_from(
        [
            "fleet-lock-protocol",
            "Fleet-Lock-Protocol",
            "content-type",
            "accept",
            "x-junk",
            "authorization",
        ]
    ),
    st.just("true") | header_values,
    max_size=4,
)
paths = st.sampled_from(
    [
        "/v1/pre-reboot",
        "//v1/pre-reboot",
        "/v1/steady-state",
        "//v1/steady-state",
        "/v1/x",
        "/",
        "/healthz",
        "/%00",
        "/v1/../v1/pre-reboot",
    ]
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedLockd]:
    db = tmp_path_factory.mktemp("fuzz") / "l.db"
    with ThreadedLockd(Settings(backend=f"sqlite://{db}", groups={"workers": 2})) as server:
        yield server


def snapshot(server: ThreadedLockd) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        groups = await server.service.list_groups()
        return {g: await server.service.read(g) for g in groups}

    return server.call(read())


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    path=paths,
    headers=headers,
    data=bodies,
)
def test_fuzz_never_5xx_and_refusals_change_nothing(
    fuzz_server: ThreadedLockd, method: str, path: str, headers: dict[str, str], data: bytes
) -> None:
    before = snapshot(fuzz_server)
    conn = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, payload
    if resp.status != 200:
        assert resp.getheader("content-type", "").startswith("application/json")
        doc = json.loads(payload)
        assert doc["kind"] and doc["value"]
        assert snapshot(fuzz_server) == before, "a refused request changed the store"
