"""Public mode over real HTTP, on sqlite and Redis: the three tenant carriers end to end,
the dropped slash, refused secrets, and nothing in clear at rest or in the logs."""

from __future__ import annotations

import base64
import http.client
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import REPO, Lockd
from lockd.tenancy import new_token
from tests.httpcall import call

PEPPER = "pepper-for-tests-" + "x" * 32
H = {"fleet-lock-protocol": "true"}
# A secret group name (the root carrier) and group names that must never be stored.
SECRET_GROUP = "SecretGroupName0123456789xyz"
GROUPS = ("workersGroupQ7", "databaseGroupZ3")


def public_env(**extra: str) -> dict[str, str]:
    return {"LOCKD_PUBLIC__ENABLED": "true", "LOCKD_PUBLIC__PEPPER": PEPPER, **extra}


@pytest.fixture(params=["sqlite", "redis"])
def public(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Lockd, str]]:
    url = (f"sqlite://{tmp_path / 'public.db'}" if request.param == "sqlite"
           else request.getfixturevalue("redis_url"))
    server = Lockd(tmp_path, "--backend", url, "--log-format", "json",
                   "--set", "log.level=debug", env=public_env()).start()
    try:
        yield server, url
    finally:
        server.stop()


def fleetlock(base: str, path: str, id_: str, group: str,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = {"client_params": {"id": id_, "group": group}}
    return call(base, "POST", path, body, headers={**H, **(headers or {})})


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def test_carriers_end_to_end(public: tuple[Lockd, str]) -> None:
    server, _ = public
    url = server.url
    token, other = new_token(), new_token()
    workers, db = GROUPS
    # Token in the path; slots are default_slots (1) per group of a tenant.
    assert fleetlock(url, f"/t/{token}/v1/pre-reboot", "a", workers)[0] == 200
    # The same tenant by Basic auth: the same group, now full.
    status, doc = fleetlock(url, "/v1/pre-reboot", "b", workers, basic(token))
    assert (status, doc["kind"]) == (423, "failed_lock_semaphore_full")
    # flatcar's doubled slash, under the tenant prefix.
    status, _ = fleetlock(url, f"/t/{token}//v1/pre-reboot", "b", workers)
    assert status == 423
    # Another group of the tenant has its own slots; another tenant its own groups.
    assert fleetlock(url, f"/t/{token}/v1/pre-reboot", "b", db)[0] == 200
    assert fleetlock(url, f"/t/{other}/v1/pre-reboot", "z", workers)[0] == 200
    # Releases, by either carrier.
    assert fleetlock(url, "/v1/steady-state", "a", workers, basic(token))[0] == 200
    assert fleetlock(url, f"/t/{token}/v1/pre-reboot", "b", workers)[0] == 200
    # A secret group name at the root is the tenant of that secret, group "default".
    assert fleetlock(url, "/v1/pre-reboot", "c", SECRET_GROUP)[0] == 200
    status, _ = fleetlock(url, f"/t/{SECRET_GROUP}/v1/pre-reboot", "d", "default")
    assert status == 423
    assert fleetlock(url, "/v1/steady-state", "c", SECRET_GROUP)[0] == 200
    assert fleetlock(url, f"/t/{SECRET_GROUP}/v1/pre-reboot", "d", "default")[0] == 200


def test_dropped_slash_says_what_to_fix(public: tuple[Lockd, str]) -> None:
    server, _ = public
    # zincati with base_url "https://host/t/<token>" (no trailing slash) drops the token.
    status, doc = fleetlock(server.url, "/t/v1/pre-reboot", "a", "workers")
    assert status == 404 and doc["kind"] == "not_found"
    assert "trailing slash" in doc["value"] and "base_url" in doc["value"]


def test_every_refused_secret_gets_one_answer(public: tuple[Lockd, str]) -> None:
    server, _ = public
    url = server.url
    token = new_token()
    typo = token[:-1] + ("a" if token[-1] != "a" else "b")
    answers = [
        fleetlock(url, "/t/shortsecret/v1/pre-reboot", "a", "workers"),
        fleetlock(url, f"/t/{'a' * 21}/v1/pre-reboot", "a", "workers"),
        fleetlock(url, f"/t/{typo}/v1/pre-reboot", "a", "workers"),
        fleetlock(url, "/v1/pre-reboot", "a", "workers", basic("shortsecret")),
        fleetlock(url, "/v1/pre-reboot", "a", "default"),
        fleetlock(url, "/v1/steady-state", "a", "a" * 21),
    ]
    assert all(a == answers[0] for a in answers), answers
    status, doc = answers[0]
    assert status == 403 and doc["kind"] == "invalid_tenant"


def store_dump(url: str) -> bytes:
    """Every key and value of the store, as bytes."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(FULL)")
            rows = [
                repr(row).encode()
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                for row in db.execute(f'SELECT * FROM "{table}"')
            ]
        files = [p.read_bytes() for p in Path(path).parent.glob(Path(path).name + "*")]
        return b"\n".join(rows + files)
    import redis

    prefix = url.partition("prefix=")[2]
    client = redis.Redis.from_url(url.partition("?")[0])
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        assert keys, "nothing was stored"
        return b"\n".join(k + b"=" + (client.dump(k) or b"") for k in keys)
    finally:
        client.close()


def test_no_secret_or_group_name_at_rest_or_in_logs(public: tuple[Lockd, str]) -> None:
    server, url = public
    token = new_token()
    for group in GROUPS:
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "node1", group)[0] == 200
    assert fleetlock(server.url, "/v1/pre-reboot", "node1", SECRET_GROUP)[0] == 200
    # A request that fails inside the tenant is logged too (423, then a 400 with the path).
    fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "node2", GROUPS[0])
    call(server.url, "POST", f"/t/{token}/v1/pre-reboot", raw=b"{", headers=H)
    server.stop()
    dump = store_dump(url)
    log = server.proc.output() if server.proc else ""
    assert "pre-reboot" in log  # the decisions were logged, just not in clear
    for text in (token, token.removeprefix("lockd_"), SECRET_GROUP, *GROUPS, PEPPER):
        assert text.encode() not in dump, text
        assert text not in log, text
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    tenants = [line for line in lines if line.get("action") == "pre-reboot"]
    assert tenants and all(len(line["group"]) == 8 for line in tenants)


def test_public_mode_needs_a_pepper(tmp_path: Path) -> None:
    env = public_env(LOCKD_PUBLIC__PEPPER="")
    with pytest.raises(RuntimeError, match="pepper"):
        Lockd(tmp_path, "--backend", "memory://", env=env).start()


def test_tenant_paths_are_not_served_in_self_hosted_mode(tmp_path: Path) -> None:
    server = Lockd(tmp_path, "--backend", "memory://").start()
    try:
        status, doc = fleetlock(server.url, f"/t/{new_token()}/v1/pre-reboot", "a", "default")
        assert (status, doc["kind"]) == (404, "not_found")
        assert fleetlock(server.url, "/v1/pre-reboot", "a", "default")[0] == 200
    finally:
        server.stop()


# Tenant self-service


def lockd_cli(*args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "lockd", *args], capture_output=True,
                         text=True, timeout=30, cwd=REPO)
    return out.returncode, out.stdout + out.stderr


def test_tenant_api_lists_and_unlocks(public: tuple[Lockd, str]) -> None:
    server, _ = public
    url = server.url
    token = new_token()
    workers, db = GROUPS
    assert fleetlock(url, f"/t/{token}/v1/pre-reboot", "a", workers)[0] == 200
    assert fleetlock(url, f"/t/{token}/v1/pre-reboot", "b", db)[0] == 200
    def listed(doc: Any) -> list[tuple[str, list[str]]]:
        return [(g["name"], [h["id"] for h in g["holders"]]) for g in doc["groups"]]

    status, doc = call(url, "GET", f"/t/{token}/v1/groups")
    assert status == 200 and listed(doc) == [(db, ["b"]), (workers, ["a"])]
    status, doc = call(url, "GET", "/v1/groups", headers=basic(token))
    assert status == 200 and listed(doc) == [(db, ["b"]), (workers, ["a"])]
    status, one = call(url, "GET", f"/t/{token}/v1/groups/{workers}")
    assert status == 200 and one["slots"] == 1 and one["available"] == 0
    # Another tenant sees none of it.
    assert call(url, "GET", f"/t/{new_token()}/v1/groups") == (200, {"groups": []})
    # A dead node's slot, freed by its tenant.
    status, doc = call(url, "POST", f"/t/{token}/v1/groups/{workers}/unlock", {"id": "a"})
    assert status == 200 and doc["outcome"] == "released" and doc["group"]["holders"] == []
    assert fleetlock(url, f"/t/{token}/v1/pre-reboot", "c", workers)[0] == 200
    # A refused secret: the one answer.
    assert call(url, "GET", "/t/short/v1/groups")[1]["kind"] == "invalid_tenant"
    assert call(url, "GET", "/v1/groups")[1]["kind"] == "invalid_tenant"


def test_lockd_status_and_unlock_with_a_tenant_url(public: tuple[Lockd, str]) -> None:
    server, _ = public
    token = new_token()
    workers, _ = GROUPS
    assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "node-a", workers)[0] == 200
    tenant_url = f"{server.url}/t/{token}/"
    code, out = lockd_cli("status", "--url", tenant_url)
    assert code == 0, out
    assert f"Group: {workers}" in out and "node-a" in out and "Available: 0" in out
    # The token as Basic user, as in zincati's base_url.
    basic_url = server.url.replace("http://", f"http://{token}@") + "/"
    code, out2 = lockd_cli("status", workers, "--url", basic_url)
    assert code == 0 and "node-a" in out2, out2
    code, out = lockd_cli("unlock", "node-a", "-g", workers, "--url", tenant_url)
    assert code == 0 and "Unlocked node-a" in out, out
    code, out = lockd_cli("unlock", "node-a", "-g", workers, "--url", tenant_url)
    assert code == 1 and "holds no slot" in out, out
    code, out = lockd_cli("status", "--url", f"{server.url}/t/short/")
    assert code == 1 and "invalid_tenant" in out, out


def raw(base: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, every header but Date, and the body bytes."""
    host, _, port = base.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return (resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() != "date"],
                resp.read())
    finally:
        conn.close()


def test_known_and_unknown_secrets_answer_alike(public: tuple[Lockd, str]) -> None:
    server, _ = public
    url = server.url
    known, unknown = new_token(), new_token()
    workers, db = GROUPS
    assert fleetlock(url, f"/t/{known}/v1/pre-reboot", "a", workers)[0] == 200
    unlock = json.dumps({"id": "nobody"}).encode()
    requests = [
        ("GET", f"/v1/groups/{db}", None, {}),
        ("POST", f"/v1/groups/{db}/unlock", unlock, {}),
        ("POST", f"/v1/groups/{workers}/unlock", unlock, {}),
        ("GET", "/v1/groups/bad_name", None, {}),
        ("POST", "/v1/steady-state",
         json.dumps({"client_params": {"id": "nobody", "group": workers}}).encode(), H),
        ("POST", "/v1/steady-state",
         json.dumps({"client_params": {"id": "nobody", "group": db}}).encode(), H),
    ]
    for method, path, body, headers in requests:
        answers = [raw(url, method, f"/t/{secret}{path}", body, headers)
                   for secret in (known, unknown)]
        assert answers[0] == answers[1], (method, path, answers)
        by_basic = [raw(url, method, path, body, {**headers, **basic(secret)})
                    for secret in (known, unknown)]
        assert by_basic[0] == by_basic[1] == answers[0], (method, path, by_basic)


def test_the_tenant_openapi_documents_every_tenant_route() -> None:
    from aiohttp import web

    from lockd import tenant_api

    app = web.Application()
    tenant_api.add_routes(app)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/t/")}
    doc = json.loads((REPO / "lockd" / "openapi-tenant.json").read_text())
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes - {("HEAD", p) for _, p in routes} == documented


# Abuse limits and quotas


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'limits.db'}"
    return str(request.getfixturevalue("redis_url"))


def start(tmp_path: Path, url: str, name: str = "lockd", **env: str) -> Lockd:
    return Lockd(tmp_path, "--backend", url, env=public_env(**env), name=name).start()


def test_one_address_creating_tenants_is_stopped(tmp_path: Path, store_url: str) -> None:
    server = start(tmp_path, store_url)
    try:
        answers = [fleetlock(server.url, f"/t/{new_token()}/v1/pre-reboot", "a", "g")[0]
                   for _ in range(30)]
        assert answers[:20] == [200] * 20 and set(answers[20:]) == {429}
        status, headers, body = raw(
            server.url, "POST", f"/t/{new_token()}/v1/pre-reboot",
            json.dumps({"client_params": {"id": "a", "group": "g"}}).encode(), H)
        assert status == 429 and json.loads(body)["kind"] == "rate_limited"
        assert int(dict(headers)["Retry-After"]) >= 1
    finally:
        server.stop()


def test_misses_are_limited_per_address(tmp_path: Path, store_url: str) -> None:
    # Per hour for the reason HOURLY gives; the default is 30/minute.
    server = start(tmp_path, store_url, LOCKD_PUBLIC__IP_MISS_RATE="30/hour")
    try:
        answers = [fleetlock(server.url, "/t/tooshort/v1/pre-reboot", "a", "g")[0]
                   for _ in range(35)]
        assert answers[:30] == [403] * 30 and set(answers[30:]) == {429}
    finally:
        server.stop()


def test_a_tenant_is_limited_apart_from_others(tmp_path: Path, store_url: str) -> None:
    server = start(tmp_path, store_url, LOCKD_PUBLIC__TENANT_RATE="10/hour")
    try:
        busy, quiet = new_token(), new_token()
        answers = [fleetlock(server.url, f"/t/{busy}/v1/steady-state", f"n{i}", "g")[0]
                   for i in range(12)]
        assert answers[:10] == [200] * 10 and answers[10:] == [429, 429]
        assert call(server.url, "GET", f"/t/{busy}/v1/groups")[0] == 429
        assert fleetlock(server.url, f"/t/{quiet}/v1/steady-state", "n", "g")[0] == 200
    finally:
        server.stop()


def test_zincati_rate_of_5000_nodes_is_not_limited(tmp_path: Path, store_url: str) -> None:
    """5,000 nodes polling every 300 s send 16.7 requests a second: sent for 4 s over real
    HTTP from one address, every limit (per address, per tenant, new groups) at its default
    (tests/test_ratelimit.py's fake-clock test runs the full 30 minutes)."""
    import time

    server = start(tmp_path, store_url)
    try:
        token = new_token()
        rate, seconds = 5000 / 300, 4
        started = time.monotonic()
        statuses = []
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            op = "pre-reboot" if i % 20 == 0 else "steady-state"
            statuses.append(fleetlock(server.url, f"/t/{token}/v1/{op}", f"node{i}", "w")[0])
            if op == "pre-reboot":
                fleetlock(server.url, f"/t/{token}/v1/steady-state", f"node{i}", "w")
        assert set(statuses) == {200}, statuses
    finally:
        server.stop()


def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    tmp_path: Path, store_url: str
) -> None:
    server = start(tmp_path, store_url, LOCKD_PUBLIC__TRUSTED_PROXIES="127.0.0.1")
    try:
        def create(client: str) -> int:
            return fleetlock(server.url, f"/t/{new_token()}/v1/pre-reboot", "a", "g",
                             {"X-Forwarded-For": client})[0]

        # Many clients behind the proxy: each its own budget.
        assert {create(f"203.0.113.{i}") for i in range(25)} == {200}
        # One client behind it: stopped, and a spoofed left-hand entry does not help.
        answers = [create(f"198.51.100.{i}, 192.0.2.1") for i in range(25)]
        assert answers[:20] == [200] * 20 and set(answers[20:]) == {429}
    finally:
        server.stop()


def test_untrusted_peers_cannot_pick_their_address(tmp_path: Path) -> None:
    server = start(tmp_path, "memory://")
    try:
        answers = [fleetlock(server.url, f"/t/{new_token()}/v1/pre-reboot", "a", "g",
                             {"X-Forwarded-For": f"203.0.113.{i}"})[0] for i in range(25)]
        assert set(answers[20:]) == {429}
    finally:
        server.stop()


def test_replicas_on_one_redis_share_the_limits(tmp_path: Path, redis_url: str) -> None:
    a = start(tmp_path, redis_url, name="a")
    b = start(tmp_path, redis_url, name="b")
    try:
        for server in (a, b) * 10:
            assert fleetlock(server.url, f"/t/{new_token()}/v1/pre-reboot", "x", "g")[0] == 200
        assert fleetlock(a.url, f"/t/{new_token()}/v1/pre-reboot", "x", "g")[0] == 429
        assert fleetlock(b.url, f"/t/{new_token()}/v1/pre-reboot", "x", "g")[0] == 429
    finally:
        a.stop()
        b.stop()


# Counted per hour, not per minute: the sliding window lets one more request through just
# after a window boundary (the previous window's count is weighted down), and a test
# crossing an hour's boundary is 60 times less likely than a minute's.
HOURLY = "20/hour"


def poll_fresh_tenant(server: Lockd, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """What a spray across tenants sends: a steady-state for a tenant never seen, which
    creates nothing and counts 1 against that tenant's own limit."""
    return fleetlock(server.url, f"/t/{new_token()}/v1/steady-state", "n", "g", headers)


def test_one_address_polling_many_tenants_is_stopped(tmp_path: Path, store_url: str) -> None:
    server = start(tmp_path, store_url, LOCKD_PUBLIC__IP_RATE=HOURLY)
    try:
        answers = [poll_fresh_tenant(server) for _ in range(25)]
        assert [a[0] for a in answers] == [200] * 20 + [429] * 5
        assert answers[-1][1]["kind"] == "rate_limited"
        assert "from this address" in answers[-1][1]["value"]
        # Misses and the tenant API count too: the address is held back whatever it sends.
        assert fleetlock(server.url, "/t/short/v1/steady-state", "n", "g")[0] == 429
        assert call(server.url, "GET", f"/t/{new_token()}/v1/groups")[0] == 429
        status, headers, _ = raw(
            server.url, "POST", f"/t/{new_token()}/v1/steady-state",
            json.dumps({"client_params": {"id": "a", "group": "g"}}).encode(), H)
        assert status == 429 and int(dict(headers)["Retry-After"]) >= 1
    finally:
        server.stop()


def test_replicas_on_one_redis_share_the_address_limit(tmp_path: Path, redis_url: str) -> None:
    a = start(tmp_path, redis_url, name="a", LOCKD_PUBLIC__IP_RATE=HOURLY)
    b = start(tmp_path, redis_url, name="b", LOCKD_PUBLIC__IP_RATE=HOURLY)
    try:
        assert [poll_fresh_tenant(server)[0] for server in (a, b) * 10] == [200] * 20
        assert poll_fresh_tenant(a)[0] == 429
        assert poll_fresh_tenant(b)[0] == 429
    finally:
        a.stop()
        b.stop()


def test_replicas_on_two_sqlite_stores_share_limits_on_one_redis(
    tmp_path: Path, redis_url: str
) -> None:
    """[public] limits_url: replicas whose stores are apart count one address together in
    that Redis, under its prefix + "limits"."""
    import redis

    limits_url = redis_url.replace("?prefix=", "?prefix=lim-")
    a = start(tmp_path, f"sqlite://{tmp_path / 'a.db'}", name="a",
              LOCKD_PUBLIC__IP_RATE=HOURLY, LOCKD_PUBLIC__LIMITS_URL=limits_url)
    b = start(tmp_path, f"sqlite://{tmp_path / 'b.db'}", name="b",
              LOCKD_PUBLIC__IP_RATE=HOURLY, LOCKD_PUBLIC__LIMITS_URL=limits_url)
    try:
        assert [poll_fresh_tenant(server)[0] for server in (a, b) * 10] == [200] * 20
        assert poll_fresh_tenant(a)[0] == 429
        assert poll_fresh_tenant(b)[0] == 429
        prefix = limits_url.partition("?prefix=")[2] + "limits"
        client = redis.Redis.from_url(redis_url.partition("?")[0])
        try:
            assert list(client.scan_iter(match=f"{prefix}*"))
        finally:
            client.close()
    finally:
        a.stop()
        b.stop()


def test_limits_in_memory_on_a_redis_store_are_per_process(
    tmp_path: Path, redis_url: str
) -> None:
    import redis

    a = start(tmp_path, redis_url, name="a", LOCKD_PUBLIC__IP_RATE=HOURLY,
              LOCKD_PUBLIC__LIMITS_URL="memory://")
    b = start(tmp_path, redis_url, name="b", LOCKD_PUBLIC__IP_RATE=HOURLY,
              LOCKD_PUBLIC__LIMITS_URL="memory://")
    try:
        assert [poll_fresh_tenant(a)[0] for _ in range(21)] == [200] * 20 + [429]
        # b has counted nothing of a's: its own 20 still pass.
        assert [poll_fresh_tenant(b)[0] for _ in range(21)] == [200] * 20 + [429]
        prefix = redis_url.partition("?prefix=")[2]
        client = redis.Redis.from_url(redis_url.partition("?")[0])
        try:
            assert not list(client.scan_iter(match=f"{prefix}limits*"))
        finally:
            client.close()
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("url", ["sqlite:///tmp/limits.db", "redis://", "memcached://x",
                                 "redis://:hunter2hunter2@cache.example/zero"])
def test_a_bad_limits_url_is_refused_naming_the_key(tmp_path: Path, url: str) -> None:
    env = public_env(LOCKD_PUBLIC__LIMITS_URL=url)
    with pytest.raises(RuntimeError, match=r"public\.limits_url") as refused:
        Lockd(tmp_path, "--backend", "memory://", env=env).start()
    # Not echoed: a Redis URL may carry a password.
    assert "hunter2" not in str(refused.value)


def test_address_limit_honours_only_a_trusted_proxy(tmp_path: Path, store_url: str) -> None:
    proxied = start(tmp_path, store_url, name="proxied", LOCKD_PUBLIC__IP_RATE=HOURLY,
                    LOCKD_PUBLIC__TRUSTED_PROXIES="127.0.0.1")
    try:
        # Many clients behind the trusted proxy: each its own budget.
        answers = [poll_fresh_tenant(proxied, {"X-Forwarded-For": f"203.0.113.{i}"})[0]
                   for i in range(25)]
        assert set(answers) == {200}
        # One client behind it, forging varied entries on the left: stopped.
        answers = [poll_fresh_tenant(proxied, {"X-Forwarded-For": f"10.9.9.{i}, 192.0.2.1"})[0]
                   for i in range(25)]
        assert answers == [200] * 20 + [429] * 5
    finally:
        proxied.stop()
    direct = start(tmp_path, "memory://", name="direct", LOCKD_PUBLIC__IP_RATE=HOURLY)
    try:
        # Not a trusted proxy: its X-Forwarded-For buys nothing.
        answers = [poll_fresh_tenant(direct, {"X-Forwarded-For": f"203.0.113.{i}"})[0]
                   for i in range(25)]
        assert answers == [200] * 20 + [429] * 5
    finally:
        direct.stop()


def test_quotas(tmp_path: Path, store_url: str) -> None:
    server = start(tmp_path, store_url, LOCKD_PUBLIC__MAX_GROUPS_PER_TENANT="2",
                   LOCKD_PUBLIC__MAX_TENANTS="2")
    try:
        first, second = new_token(), new_token()
        for group in ("g1", "g2"):
            assert fleetlock(server.url, f"/t/{first}/v1/pre-reboot", "a", group)[0] == 200
        status, doc = fleetlock(server.url, f"/t/{first}/v1/pre-reboot", "a", "g3")
        assert (status, doc["kind"]) == (403, "quota_exceeded")
        # Existing groups go on working.
        assert fleetlock(server.url, f"/t/{first}/v1/pre-reboot", "b", "g1")[0] == 423
        assert fleetlock(server.url, f"/t/{second}/v1/pre-reboot", "a", "g1")[0] == 200
        status, doc = fleetlock(server.url, f"/t/{new_token()}/v1/pre-reboot", "a", "g1")
        assert (status, doc["kind"]) == (403, "quota_exceeded")
    finally:
        server.stop()


def test_sighup_changes_the_slots_of_tenant_groups(tmp_path: Path) -> None:
    import signal

    config = tmp_path / "lockd.toml"
    config.write_text("[public]\nenabled = true\n[lock]\ndefault_slots = 1\n")
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://",
                   env={"LOCKD_PUBLIC__PEPPER": PEPPER}).start()
    try:
        token = new_token()
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "a", "g")[0] == 200
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "b", "g")[0] == 423
        config.write_text("[public]\nenabled = true\n[lock]\ndefault_slots = 2\n")
        server.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        server.wait_for_output("configuration reloaded")
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "b", "g")[0] == 200
    finally:
        server.stop()


def test_sighup_reloads_the_abuse_limits_but_not_the_pepper(tmp_path: Path) -> None:
    import signal

    pepper = tmp_path / "pepper"
    pepper.write_text(PEPPER)
    config = tmp_path / "lockd.toml"

    def configure(public: str) -> None:
        config.write_text(f'[public]\nenabled = true\npepper_file = "{pepper}"\n{public}')

    configure('ip_rate = "5/hour"\n')
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://").start()
    assert server.proc is not None
    try:
        token = new_token()
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "a", "g")[0] == 200
        assert [poll_fresh_tenant(server)[0] for _ in range(5)] == [200] * 4 + [429]
        # A new rate and quota, and a new pepper, which must not be taken.
        configure('ip_rate = "100/hour"\nmax_groups_per_tenant = 1\n')
        pepper.write_text("another-pepper-" + "y" * 32)
        server.proc.signal(signal.SIGHUP)
        server.wait_for_output("configuration reloaded")
        assert "ip_rate=100/hour" in server.proc.output()
        assert "not applied until a restart: public_pepper" in server.proc.output()
        assert poll_fresh_tenant(server)[0] == 200
        # The running pepper stays: the tenant's group still has its holder.
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "b", "g")[0] == 423
        status, doc = fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "a", "g2")
        assert (status, doc["kind"]) == (403, "quota_exceeded")
        # A configuration that cannot work is refused whole; the limits in force stay.
        configure('ip_rate = "lots"\nmax_groups_per_tenant = 5\n')
        server.proc.signal(signal.SIGHUP)
        server.wait_for_output("reload refused")
        assert fleetlock(server.url, f"/t/{token}/v1/pre-reboot", "a", "g2")[0] == 403
        # And back down: the lower rate is in force at once.
        configure('ip_rate = "2/hour"\n')
        server.proc.signal(signal.SIGHUP)
        server.wait_for_output("ip_rate=2/hour")
        assert [poll_fresh_tenant(server)[0] for _ in range(3)] == [200, 200, 429]
    finally:
        server.stop()


def test_sighup_does_not_move_the_limit_counters(tmp_path: Path) -> None:
    """limits_url is restart-only: new storage would start every count afresh, so a reload
    says it is not applied, and the running counts hold."""
    import signal

    pepper = tmp_path / "pepper"
    pepper.write_text(PEPPER)
    config = tmp_path / "lockd.toml"
    config.write_text(f'[public]\nenabled = true\npepper_file = "{pepper}"\n'
                      'ip_rate = "3/hour"\n')
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://").start()
    assert server.proc is not None
    try:
        assert [poll_fresh_tenant(server)[0] for _ in range(4)] == [200] * 3 + [429]
        config.write_text(f'[public]\nenabled = true\npepper_file = "{pepper}"\n'
                          'ip_rate = "3/hour"\nlimits_url = "memory://"\n')
        server.proc.signal(signal.SIGHUP)
        server.wait_for_output("configuration reloaded")
        assert "not applied until a restart: public_limits_url" in server.proc.output()
        assert poll_fresh_tenant(server)[0] == 429
    finally:
        server.stop()
