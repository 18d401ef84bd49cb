"""Health gates against real servers: a Prometheus whose rules fire (``vector(1)``) or not, a
Prometheus that goes down (the gate fails closed), an Alertmanager whose silences open the
gate, and the cache bounding how often a reboot storm asks Prometheus (counted by
Prometheus' own ``prometheus_http_requests_total``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.procs import Lockd
from lockd.gates import AlertPattern, Gates, PrometheusGate, WebhookGate
from tests.httpcall import lock
from tests.prometheus_servers import (
    FIRING_RULES,
    QUIET_RULES,
    AlertmanagerServer,
    PrometheusServer,
)
from tests.receivers import Receiver


@pytest.fixture(scope="module")
def firing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prom-firing"), FIRING_RULES).start()
    try:
        server.wait_for_alerts(3)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prom-quiet"), QUIET_RULES).start()
    try:
        yield server
    finally:
        server.stop()


def prom(url: str, **kw: object) -> PrometheusGate:
    patterns = {k: tuple(AlertPattern.parse(p) for p in kw.pop(k, ()))  # type: ignore[attr-defined]
                for k in ("include", "exclude")}
    return PrometheusGate("prom", url, **patterns, **kw)  # type: ignore[arg-type]


async def ask(gate: PrometheusGate | WebhookGate) -> tuple[str, str]:
    gates = Gates([gate], cache_s=0)
    try:
        v = await gates.check([gate.name], "workers", "node-a")
        return v.state, v.reason
    finally:
        await gates.close()


async def test_firing_alerts_close_the_gate(firing: PrometheusServer) -> None:
    state, reason = await ask(prom(firing.url))
    assert state == "closed"
    assert reason.startswith("3 alerts active: ") and "NodeDown" in reason


async def test_patterns_and_firing_only_pick_the_alerts_that_count(
    firing: PrometheusServer,
) -> None:
    # kured's model: exclude alerts by name, or only count some; pending ones count unless
    # firing_only.
    assert (await ask(prom(firing.url, exclude=["NodeDown", "Watchdog"])))[0] == "closed"
    assert (await ask(prom(firing.url, exclude=["NodeDown", "Watchdog"],
                           firing_only=True)))[0] == "open"
    state, reason = await ask(prom(firing.url, include=["severity=critical|warning"]))
    assert state == "closed" and reason == "2 alerts active: NodeDown, SlowDisk"
    assert (await ask(prom(firing.url, include=["Disk.*"])))[0] == "open"  # full match
    assert (await ask(prom(firing.url, include=[".*Disk"], exclude=["severity=warning"])))[0] \
        == "open"


async def test_a_quiet_prometheus_opens_the_gate(quiet: PrometheusServer) -> None:
    assert await ask(prom(quiet.url)) == ("open", "")


async def test_a_prometheus_that_is_down_fails_closed(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path / "prom", QUIET_RULES).start()
    gates = Gates([prom(server.url, timeout=1.0)], cache_s=0)
    try:
        assert (await gates.check(["prom"], "g", "n")).state == "open"
        server.stop()
        down = await gates.check(["prom"], "g", "n")
        assert down.state == "unreachable" and down.reason == "prometheus cannot be reached"
        assert server.url not in down.reason  # nodes are not told internal addresses
    finally:
        server.stop()
        await gates.close()


async def test_alertmanager_silences_open_the_gate(tmp_path: Path) -> None:
    am = AlertmanagerServer(tmp_path / "am").start()
    try:
        now = datetime.now(UTC)
        am.post("/api/v2/alerts", [
            {"labels": {"alertname": "DiskFull", "severity": "page"},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()},
        ])
        gate = PrometheusGate("am", am.url, api="alertmanager")
        for _ in range(50):  # Alertmanager takes the alert in asynchronously
            state, reason = await ask(gate)
            if state == "closed":
                break
            await asyncio.sleep(0.1)
        assert (state, reason) == ("closed", "1 alert active: DiskFull")
        am.post("/api/v2/silences", {
            "matchers": [{"name": "alertname", "value": "DiskFull", "isRegex": False}],
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
            "createdBy": "lockd tests", "comment": "maintenance",
        })
        for _ in range(50):
            state, _ = await ask(gate)
            if state == "open":
                break
            await asyncio.sleep(0.1)
        assert state == "open"  # silenced alerts do not block
    finally:
        am.stop()


async def test_a_webhook_gate_answers_per_node() -> None:
    with Receiver(answers=[200, 409, 503], body="node-b still drains pods") as hook:
        gates = Gates([WebhookGate("drain", hook.url + "/ok")], cache_s=60)
        try:
            assert (await gates.check(["drain"], "w", "node-a")).state == "open"
            closed = await gates.check(["drain"], "w", "node-b")  # not node-a's answer
            assert (closed.state, closed.reason) == (
                "closed", "the webhook answered 409: node-b still drains pods")
            assert (await gates.check(["drain"], "w", "node-c")).state == "unreachable"  # 503
            assert (await gates.check(["drain"], "w", "node-a")).state == "open"  # cached
            assert len(hook.requests()) == 3
        finally:
            await gates.close()


async def test_concurrent_questions_share_one_request(firing: PrometheusServer) -> None:
    gates = Gates([prom(firing.url)], cache_s=0.0)
    before = firing.alerts_api_requests()
    try:
        verdicts = await asyncio.gather(*(gates.check(["prom"], "g", f"n{i}")
                                          for i in range(50)))
    finally:
        await gates.close()
    assert {v.state for v in verdicts} == {"closed"}
    assert firing.alerts_api_requests() - before == 1


def window_now() -> str:
    start = datetime.now(UTC) - timedelta(minutes=1)
    return f"{start:%a} {start:%H:%M} 1h UTC"


def test_a_reboot_storm_asks_prometheus_once_per_cache_period(
    firing: PrometheusServer, tmp_path: Path
) -> None:
    config = tmp_path / "lockd.toml"
    config.write_text(f"""
[lock]
gates = ["cluster"]
[[lock.groups]]
name = "workers"
slots = 2
windows = ["{window_now()}"]
[[gates.prometheus]]
name = "cluster"
url = "{firing.url}"
[gates]
cache_s = 1
""")
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://").start()
    try:
        before = firing.alerts_api_requests()
        started = time.monotonic()
        answers = []
        with ThreadPoolExecutor(16) as pool:
            while time.monotonic() - started < 3.0:
                answers += pool.map(lambda i: lock(server.url, "pre-reboot", f"n{i}",
                                                   "workers"), range(16))
        asked = firing.alerts_api_requests() - before
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert len(answers) > 100
    assert {(s, b["kind"]) for s, b in answers} == {(423, "failed_lock_gate_closed")}
    assert "NodeDown" in answers[0][1]["value"]
    assert 1 <= asked <= elapsed / 1.0 + 2, f"{asked} questions in {elapsed:.1f} s"


def test_over_http_an_unreachable_prometheus_refuses_with_its_own_kind(
    tmp_path: Path,
) -> None:
    server_dir = tmp_path / "prom"
    prometheus = PrometheusServer(server_dir, QUIET_RULES).start()
    config = tmp_path / "lockd.toml"
    config.write_text(f"""
[lock]
gates = ["cluster"]
[[gates.prometheus]]
name = "cluster"
url = "{prometheus.url}"
timeout_s = 1
[gates]
cache_s = 0
""")
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://").start()
    try:
        assert lock(server.url, "pre-reboot", "n1", "default")[0] == 200  # quiet: open
        prometheus.stop()
        # The holder is never held up by a gate, nor is any unlock.
        assert lock(server.url, "pre-reboot", "n1", "default") == (200, {"outcome":
                                                                        "already_held"})
        assert lock(server.url, "steady-state", "n1", "default")[0] == 200
        status, body = lock(server.url, "pre-reboot", "n2", "default")
        assert (status, body["kind"]) == (423, "failed_lock_gate_unreachable")
        assert "cluster" in body["value"] and prometheus.url not in body["value"]
    finally:
        server.stop()
        prometheus.stop()
