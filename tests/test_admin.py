"""The admin API end to end against a running ``lockd serve`` (memory:// and sqlite://).

Also: the FleetLock listener serves no admin route, the bearer token protects every route
that carries fleet data or changes something, the OpenAPI document lists every route, and
each change leaves a structured ``admin_change`` event in the log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import Lockd, free_port, start_lockd
from tests.httpcall import call, lock


def events(server: Lockd) -> list[dict[str, Any]]:
    """The structured admin_change events lockd logged so far."""
    found = []
    for line in server.proc.output().splitlines() if server.proc else ():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == "admin_change":
                found.append(doc)
    return found


def test_admin_api_end_to_end(lockd: Lockd) -> None:
    admin = lockd.admin_url
    assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200
    assert lock(lockd.url, "pre-reboot", "node-b", "workers")[0] == 200

    status, doc = call(admin, "GET", "/api/v1/groups")
    assert status == 200
    by_name = {g["name"]: g for g in doc["groups"]}
    assert set(by_name) == {"default", "workers"}  # configured + stored
    assert by_name["default"]["holders"] == [] and by_name["default"]["stored"] is False

    status, g = call(admin, "GET", "/api/v1/groups/workers")
    assert status == 200
    assert (g["name"], g["slots"], g["available"], g["paused"]) == ("workers", 2, 0, False)
    assert [h["id"] for h in g["holders"]] == ["node-a", "node-b"]
    assert [h["grant_id"] for h in g["holders"]] == [1, 2]
    for h in g["holders"]:
        assert 0 <= h["age_seconds"] < 60
        assert abs(g["now"] - h["granted_at"] - h["age_seconds"]) < 1
        assert h["granted_at_iso"].endswith("Z")
    assert g["policy"]["configured_slots"] == 2 and g["policy"]["slots_source"] == "group"

    # set slots: a third node fits afterwards
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 423
    status, doc = call(admin, "PUT", "/api/v1/groups/workers/slots", {"slots": 3})
    assert status == 200 and (doc["old_slots"], doc["slots"]) == (2, 3)
    assert doc["group"]["available"] == 1

    # pause: a new node is refused with the bounded pause kind, a holder may still re-lock
    status, doc = call(admin, "POST", "/api/v1/groups/workers/pause")
    assert status == 200 and doc["changed"] is True and doc["group"]["paused"] is True
    status, doc = call(admin, "POST", "/api/v1/groups/workers/pause")
    assert status == 200 and doc["changed"] is False
    status, doc = lock(lockd.url, "pre-reboot", "node-c", "workers")
    assert status == 423 and doc["kind"] == "failed_lock_group_paused"
    assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200
    status, doc = call(admin, "POST", "/api/v1/groups/workers/resume")
    assert status == 200 and doc["changed"] is True and doc["group"]["paused"] is False
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 200

    # force-unlock a dead node; a second time it holds nothing
    status, doc = call(admin, "POST", "/api/v1/groups/workers/unlock", {"id": "node-b"})
    assert status == 200 and doc["outcome"] == "released"
    assert [h["id"] for h in doc["group"]["holders"]] == ["node-a", "node-c"]
    status, doc = call(admin, "POST", "/api/v1/groups/workers/unlock", {"id": "node-b"})
    assert status == 404 and doc["kind"] == "not_found" and "node-b" in doc["value"]

    # every change is one structured event: who, what, when
    log = events(lockd)
    assert [(e["action"], e["group"]) for e in log] == [
        ("set-slots", "workers"),
        ("pause", "workers"),
        ("pause", "workers"),
        ("resume", "workers"),
        ("force-unlock", "workers"),
    ]
    unlock_event = log[-1]
    assert unlock_event["id"] == "node-b" and unlock_event["remote"] == "127.0.0.1"
    assert unlock_event["actor"] == "admin-api" and unlock_event["at"].endswith("Z")
    assert unlock_event["before"]["holders"] == 3 and unlock_event["after"]["holders"] == 2
    assert log[0]["before"]["slots"] == 2 and log[0]["after"]["slots"] == 3


def still(group: dict[str, Any]) -> dict[str, Any]:
    """A group view without what moves with the clock."""
    holders = [{k: v for k, v in h.items() if k != "age_seconds"} for h in group["holders"]]
    return {**{k: v for k, v in group.items() if k != "now"}, "holders": holders}


def test_admin_error_paths_change_nothing(lockd: Lockd) -> None:
    admin = lockd.admin_url
    assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200
    _, before = call(admin, "GET", "/api/v1/groups/workers")

    bad: list[tuple[str, str, Any, bytes | None, int, str]] = [
        ("GET", "/api/v1/groups/nope", None, None, 404, "unknown_group"),
        ("POST", "/api/v1/groups/nope/pause", None, None, 404, "unknown_group"),
        ("POST", "/api/v1/groups/nope/unlock", {"id": "node-a"}, None, 404, "unknown_group"),
        ("PUT", "/api/v1/groups/nope/slots", {"slots": 2}, None, 404, "unknown_group"),
        ("GET", "/api/v1/groups/bad_name!", None, None, 400, "invalid_group"),
        ("POST", "/api/v1/groups/bad_name/pause", None, None, 400, "invalid_group"),
        ("PUT", "/api/v1/groups/workers/slots", {"slots": 0}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", {"slots": -1}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", {"slots": "3"}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", {"slots": True}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", {"slots": 2.5}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", {"slots": 10**7}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", {}, None, 400, "invalid_request"),
        ("PUT", "/api/v1/groups/workers/slots", None, b"{not json", 400, "invalid_body"),
        ("PUT", "/api/v1/groups/workers/slots", None, b"[3]", 400, "invalid_body"),
        ("POST", "/api/v1/groups/workers/unlock", {"id": ""}, None, 400,
         "invalid_client_identity"),
        ("POST", "/api/v1/groups/workers/unlock", {"id": 7}, None, 400,
         "invalid_client_identity"),
        ("POST", "/api/v1/groups/workers/unlock", {}, None, 400, "invalid_client_identity"),
        ("POST", "/api/v1/groups/workers/unlock", {"id": "x" * 300}, None, 400,
         "invalid_client_identity"),
        ("POST", "/api/v1/groups/workers/unlock", {"id": "ghost"}, None, 404, "not_found"),
        ("DELETE", "/api/v1/groups/workers", None, None, 405, "method_not_allowed"),
        ("GET", "/api/v1/nothing", None, None, 404, "not_found"),
        ("PUT", "/api/v1/groups/workers/slots", None, b"{" + b" " * 10_000 + b"}", 413,
         "body_too_large"),
    ]
    for method, path, body, raw, want_status, want_kind in bad:
        status, doc = call(admin, method, path, body, raw=raw)
        assert (status, doc["kind"]) == (want_status, want_kind), (method, path, body, doc)
        assert doc["value"]

    _, after = call(admin, "GET", "/api/v1/groups/workers")
    assert still(after) == still(before)
    assert [(h["id"], h["grant_id"]) for h in after["holders"]] == [("node-a", 1)]
    assert (after["slots"], after["paused"]) == (2, False)
    # an admin change never creates a group by accident
    status, doc = call(admin, "GET", "/api/v1/groups")
    assert {g["name"] for g in doc["groups"]} == {"default", "workers"}
    assert events(lockd) == []


def test_fleetlock_listener_never_serves_admin_routes(tmp_path: Path) -> None:
    server = start_lockd(tmp_path, "memory")
    try:
        for method, path in [
            ("GET", "/"),
            ("GET", "/api/v1/groups"),
            ("GET", "/api/v1/groups/workers"),
            ("POST", "/api/v1/groups/workers/pause"),
            ("PUT", "/api/v1/groups/workers/slots"),
            ("GET", "/api/openapi.json"),
            ("GET", "/metrics"),
        ]:
            status, doc = call(server.url, method, path, {"slots": 5})
            assert status == 404 and doc["kind"] == "not_found", (method, path, doc)
        status, doc = call(server.admin_url, "GET", "/api/v1/groups/workers")
        assert status == 200 and doc["paused"] is False and doc["slots"] == 2
        # and the admin listener is no FleetLock listener
        status, _ = lock(server.admin_url, "pre-reboot", "node-a", "workers")
        assert status == 404
    finally:
        server.stop()


def test_token_protects_every_route_with_data(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-tests\n")
    server = start_lockd(tmp_path, "sqlite", "--admin-token-file", str(token_file))
    admin, good = server.admin_url, "s3cret-token-for-tests"
    try:
        assert lock(server.url, "pre-reboot", "node-a", "workers")[0] == 200
        protected: list[tuple[str, str, Any]] = [
            ("GET", "/api/v1/groups", None),
            ("GET", "/api/v1/groups/workers", None),
            ("POST", "/api/v1/groups/workers/unlock", {"id": "node-a"}),
            ("PUT", "/api/v1/groups/workers/slots", {"slots": 5}),
            ("POST", "/api/v1/groups/workers/pause", None),
            ("POST", "/api/v1/groups/workers/resume", None),
            ("GET", "/metrics", None),
            ("GET", "/api/v1/nothing", None),  # not even whether a route exists
        ]
        for method, path, body in protected:
            for token, extra in [
                (None, {}),
                ("wrong", {}),
                ("s3cret-token-for-test", {}),  # a prefix
                (good + "x", {}),
                ("", {}),
                (None, {"Authorization": f"Basic {good}"}),
                (None, {"Authorization": good}),
            ]:
                status, doc = call(admin, method, path, body, token=token, headers=extra)
                assert status == 401, (method, path, token, extra, doc)
                assert doc["kind"] == "unauthorized" and doc["value"]
        # nothing changed, and no change was logged
        status, g = call(admin, "GET", "/api/v1/groups/workers", token=good)
        assert status == 200
        assert (g["slots"], g["paused"], [h["id"] for h in g["holders"]]) == (
            2, False, ["node-a"]
        )
        assert events(server) == []
        # the right token works; public routes carry no fleet data and need none
        status, doc = call(admin, "POST", "/api/v1/groups/workers/pause", token=good)
        assert status == 200 and doc["changed"] is True
        assert events(server)[-1]["token"] is True
        for path in ("/", "/api/openapi.json", "/healthz"):
            assert call(admin, "GET", path)[0] == 200, path
        # rotation: the file is re-read when it changes
        token_file.write_text("rotated-token\n")
        os.utime(token_file, (1, 1))  # a distinct mtime even within one clock tick
        assert call(admin, "GET", "/api/v1/groups", token=good)[0] == 401
        assert call(admin, "GET", "/api/v1/groups", token="rotated-token")[0] == 200
    finally:
        server.stop()


def test_empty_token_file_refuses_to_start(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    server = Lockd(tmp_path, "--backend", "memory://", "--admin-token-file", str(token_file))
    with pytest.raises(RuntimeError) as err:
        server.start()
    assert "admin.token_file" in str(err.value) and "empty" in str(err.value)
    assert server.proc is not None and server.proc.proc is not None
    assert server.proc.proc.returncode == 2


def test_strict_groups_and_status_listener(tmp_path: Path) -> None:
    """Under strict_groups an unknown group is unknown_group; airlock's [status] listener
    serves /metrics (only)."""
    port = free_port()
    server = start_lockd(
        tmp_path, "memory", "--strict-groups", "--set", f"status.port={port}"
    )
    try:
        status, doc = call(server.admin_url, "GET", "/api/v1/groups/other")
        assert status == 404 and doc["kind"] == "unknown_group"
        status, doc = call(server.admin_url, "POST", "/api/v1/groups/other/pause")
        assert status == 404 and doc["kind"] == "unknown_group"
        assert server.urls["metrics"] == f"http://127.0.0.1:{port}"
        status, text = call(server.urls["metrics"], "GET", "/metrics")
        assert status == 200 and "lockd_config_groups 2.0" in text
        status, doc = call(server.urls["metrics"], "GET", "/api/v1/groups")
        assert status == 404 and doc["kind"] == "not_found"
    finally:
        server.stop()


def test_openapi_documents_every_admin_route(tmp_path: Path) -> None:
    from aiohttp import web

    from lockd.admin import create_admin_app
    from lockd.config import Settings

    app = create_admin_app(Settings(), web.Application())
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    server = start_lockd(tmp_path, "memory")
    try:
        status, doc = call(server.admin_url, "GET", "/api/openapi.json")
    finally:
        server.stop()
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # every $ref resolves


def test_holders_without_grant_time() -> None:
    """airlock and locksmith store no grant time (0): shown as unknown, not as 56 years."""
    from lockd.admin import holder_view
    from lockd.cli.operator import format_group
    from lockd.semaphore import Holder

    view = holder_view(Holder("from-airlock", 0.0, 0), now=1_800_000_000.0)
    assert view == {
        "id": "from-airlock", "granted_at": None, "granted_at_iso": None,
        "age_seconds": None, "grant_id": None,
    }
    known = holder_view(Holder("node-a", 1_799_999_940.0, 4), now=1_800_000_000.0)
    assert (known["age_seconds"], known["grant_id"]) == (60.0, 4)
    text = format_group(
        {"available": 0, "slots": 2, "paused": False, "holders": [view, known]}
    )
    assert text.splitlines()[4].split() == ["from-airlock", "?", "unknown", "-"]
    assert text.splitlines()[5].split() == ["node-a", "1m0s", known["granted_at_iso"], "#4"]
