"""The reboot policy end to end over HTTP: two ``lockd serve`` replicas sharing one store
(a sqlite file, or a real redis-server), windows computed relative to now, stale marking,
expiry of exactly the expired holder, cooldown shared between replicas, notifications, and
every refusal kind being a documented one."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.procs import REPO, Lockd
from lockd.errors import Kind
from lockd.windows import DAY_NAMES, format_instant
from tests.httpcall import call, lock
from tests.receivers import Receiver
from tests.test_metrics import scrape, value

Start = Callable[..., list[Lockd]]


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    """``start(config_text, n=2)``: n lockd processes on one store, with that config."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    started: list[Lockd] = []

    def start(text: str, n: int = 2) -> list[Lockd]:
        config = tmp_path / "lockd.toml"
        config.write_text(text)
        for i in range(n):
            started.append(Lockd(tmp_path, "--config", str(config), "--backend", url,
                                 "--log-format", "json", name=f"lockd-{i}").start())
        return started

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def group(server: Lockd, name: str) -> dict[str, Any]:
    status, doc = call(server.admin_url, "GET", f"/api/v1/groups/{name}")
    assert status == 200, doc
    return doc


def logged(server: Lockd, event: str) -> list[dict[str, Any]]:
    out = server.proc.output() if server.proc else ""
    return [d for d in (json.loads(line) for line in out.splitlines() if line.startswith("{"))
            if d.get("event") == event]


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        time.sleep(0.05)


def window_at(start: datetime, length: str) -> str:
    """A window string starting at ``start`` (UTC), on that weekday."""
    return f"{DAY_NAMES[start.weekday()][:3]} {start:%H:%M:%S} {length} UTC"


def test_windows_refuse_outside_and_admit_inside(replicas: Start) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    later = now + timedelta(hours=2)
    opens_soon = now + timedelta(seconds=6)  # after both replicas are up
    a, b = replicas(
        f"""
[[lock.groups]]
name = "closed"
windows = ["{window_at(later, '1h')}"]
[[lock.groups]]
name = "open"
windows = ["{window_at(now - timedelta(minutes=5), '1h')}"]
[[lock.groups]]
name = "short"
slots = 2
windows = ["{window_at(opens_soon, '3s')}"]
"""
    )
    status, body = lock(a.url, "pre-reboot", "n1", "closed")
    assert (status, body["kind"]) == (423, "failed_lock_outside_window")
    assert format_instant(later.timestamp(), "UTC") in body["value"]
    assert lock(b.url, "pre-reboot", "n1", "open")[0] == 200
    view = group(a, "closed")["policy"]["windows"]
    assert view["open"] is False and view["next_open"] == later.timestamp()

    # A window that opens and closes while we watch: a holder granted inside may re-lock
    # and release after it closed; a new node may not be granted.
    if time.time() < opens_soon.timestamp() - 0.5:  # (the replicas may be slow to start)
        early = lock(a.url, "pre-reboot", "early", "short")[1]
        assert early["kind"] == "failed_lock_outside_window"
    eventually(lambda: group(b, "short")["policy"]["windows"]["open"])
    assert lock(a.url, "pre-reboot", "inside", "short")[0] == 200
    eventually(lambda: not group(a, "short")["policy"]["windows"]["open"])
    assert lock(b.url, "pre-reboot", "inside", "short") == (200, {"outcome": "already_held"})
    status, body = lock(b.url, "pre-reboot", "late", "short")
    assert (status, body["kind"]) == (423, "failed_lock_outside_window")
    assert lock(a.url, "steady-state", "inside", "short") == (200, {"outcome": "released"})


def test_stale_holders_are_marked_not_touched(replicas: Start) -> None:
    a, b = replicas('[lock]\nstale_after = "1s"\nsweep_interval_s = 0.2\n'
                    '[[lock.groups]]\nname = "workers"\nslots = 2\n')
    assert lock(a.url, "pre-reboot", "slow", "workers")[0] == 200
    eventually(lambda: group(b, "workers")["stale_holders"] == 1)
    assert lock(b.url, "pre-reboot", "fresh", "workers")[0] == 200
    g = group(a, "workers")
    assert {h["id"]: h["stale"] for h in g["holders"]} == {"slow": True, "fresh": False}
    samples, _ = scrape(a.admin_url)
    assert value(samples, "lockd_group_stale_holders", group="workers") == 1
    time.sleep(0.6)  # a few sweeps on both replicas
    reports = [e for s in (a, b) for e in logged(s, "holder_stale")]
    assert [(e["group"], e["id"]) for e in reports] == [("workers", "slow")]  # once
    assert [h["id"] for h in group(b, "workers")["holders"]] == ["slow", "fresh"]


def test_expiry_releases_exactly_the_expired_holder(replicas: Start) -> None:
    a, b = replicas('[lock]\nexpire_after = "3s"\nsweep_interval_s = 0.2\n'
                    '[[lock.groups]]\nname = "workers"\nslots = 3\n')
    assert lock(a.url, "pre-reboot", "dead", "workers")[0] == 200
    time.sleep(1.5)
    assert lock(b.url, "pre-reboot", "alive", "workers")[0] == 200
    holders = eventually(lambda: (ids := [h["id"] for h in group(a, "workers")["holders"]])
                         != ["dead", "alive"] and ids)
    assert holders == ["alive"]  # only the one that had held 3 s
    g = group(b, "workers")
    assert [(r["id"], r["ended"]) for r in g["history"]] == [("dead", "expiry")]
    assert g["holders"][0]["expires_at"] == pytest.approx(g["holders"][0]["granted_at"] + 3)
    expiries = [e for s in (a, b) for e in logged(s, "holder_expired")]
    assert [(e["group"], e["id"]) for e in expiries] == [("workers", "dead")]  # one replica
    counted = sum(value(scrape(s.admin_url)[0], "lockd_expiries_total", group="workers")
                  for s in (a, b))
    assert counted == 1
    # The expired node's steady-state is a plain 200: it holds nothing any more.
    assert lock(a.url, "steady-state", "dead", "workers") == (200, {"outcome": "not_held"})


def test_cooldown_is_shared_between_replicas(replicas: Start) -> None:
    a, b = replicas('[[lock.groups]]\nname = "workers"\ncooldown = "2s"\n')
    assert lock(a.url, "pre-reboot", "n1", "workers")[0] == 200
    assert lock(a.url, "steady-state", "n1", "workers")[0] == 200
    released = time.time()
    status, body = lock(b.url, "pre-reboot", "n2", "workers")  # the other replica knows
    assert (status, body["kind"]) == (423, "failed_lock_cooldown")
    assert "next grant possible at" in body["value"]
    cooldown = group(b, "workers")["policy"]["cooldown"]
    assert cooldown["cooling_slots"] == 1 and cooldown["until"] == pytest.approx(released + 2,
                                                                                 abs=1)
    time.sleep(max(0.0, released + 2.2 - time.time()))
    assert lock(b.url, "pre-reboot", "n2", "workers")[0] == 200


def test_notifications_reach_a_receiver(replicas: Start) -> None:
    with Receiver(answers=[500]) as rx:  # the first delivery fails and is retried
        a, b = replicas(f"""
[[notify.webhook]]
url = "{rx.url}/events"
[notify]
backoff_s = 0.05
""")
        assert lock(a.url, "pre-reboot", "n1", "default")[0] == 200
        rx.wait_for(2)  # failed, then retried (replicas' events are not ordered between them)
        assert lock(b.url, "steady-state", "n1", "default")[0] == 200
        got = rx.wait_for(3)
    bodies = [r.json() for r in got if r.path == "/events"]
    kinds = [(d["event"], d["id"]) for d in bodies]
    assert kinds == [("grant", "n1"), ("grant", "n1"), ("release", "n1")]  # one retry
    assert bodies[2]["held_seconds"] is not None and bodies[2]["by"] == "node"


def test_every_refusal_kind_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    policy_doc = (REPO / "docs" / "policy.md").read_text()
    refusals = [k for k in Kind if k.status == 423]
    assert len(refusals) == 6
    for kind in refusals:
        assert re.search(rf"\| 423 \| `{kind.value}` \|", readme), kind
        if kind.value not in ("failed_lock_semaphore_full", "failed_lock_group_paused"):
            assert f"`{kind.value}`" in policy_doc, kind
