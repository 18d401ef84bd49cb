"""Public mode over real HTTP, on sqlite and Redis: the three tenant carriers end to end,
the dropped slash, refused secrets, and nothing in clear at rest or in the logs."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import Lockd
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
