"""Prometheus metrics: the exposition parses, counters move as a scripted sequence says,
group labels stay bounded and no label ever carries a node id."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import Lockd, free_port, start_lockd
from lockd.backends import Backend, CasResult, Version
from lockd.backends.memory import MemoryBackend
from lockd.groups import GroupSettings
from lockd.layouts import NativeLayout
from lockd.metrics import (
    DEFAULT_GROUP_CAP,
    LATENCY_BUCKETS,
    OTHER_GROUP,
    REBOOT_BUCKETS,
    LoopCounter,
    LoopHistogram,
    Metrics,
)
from lockd.semaphore import Outcome
from lockd.service import LockService
from lockd.store import Store, TimedBackend
from tests.httpcall import FLEETLOCK_HEADERS, call, lock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: Every label name lockd may use; "id" is not one of them, ever.
LABEL_NAMES = {"endpoint", "kind", "action", "outcome", "group", "by", "operation", "le",
               "gate", "result", "reason"}


def scrape(url: str) -> tuple[Samples, str]:
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("lockd_"), family.name
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(samples: Samples, label: str) -> set[str]:
    return {v for (_, labels) in samples for k, v in labels if k == label}


def test_counters_follow_a_scripted_sequence(lockd: Lockd) -> None:
    before, _ = scrape(lockd.admin_url)
    ids = ["node-a", "node-b", "node-c", "ghost"]
    assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200  # granted
    assert lock(lockd.url, "pre-reboot", "node-b", "workers")[0] == 200  # granted
    assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200  # already held
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 423  # full
    assert lock(lockd.url, "steady-state", "node-a", "workers")[0] == 200  # released
    assert lock(lockd.url, "steady-state", "ghost", "workers")[0] == 200  # not held
    assert call(lockd.url, "POST", "/v1/pre-reboot", raw=b"{", headers=FLEETLOCK_HEADERS)[0] == 400
    assert call(lockd.url, "POST", "/v1/pre-reboot", {"client_params": {}})[0] == 400
    assert call(lockd.url, "GET", "/healthz")[0] == 200
    unlock = call(lockd.admin_url, "POST", "/api/v1/groups/workers/unlock", {"id": "node-b"})
    assert unlock[0] == 200
    assert call(lockd.admin_url, "POST", "/api/v1/groups/workers/pause")[0] == 200
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 423  # paused
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 423  # paused
    after, text = scrape(lockd.admin_url)

    req = "lockd_http_requests_total"
    assert delta(before, after, req, endpoint="pre-reboot", kind="ok") == 3
    assert delta(before, after, req, endpoint="pre-reboot", kind="failed_lock_semaphore_full") == 1
    assert delta(before, after, req, endpoint="pre-reboot", kind="failed_lock_group_paused") == 2
    assert delta(before, after, req, endpoint="pre-reboot", kind="invalid_body") == 1
    assert delta(before, after, req, endpoint="pre-reboot", kind="missing_protocol_header") == 1
    assert delta(before, after, req, endpoint="steady-state", kind="ok") == 2
    assert delta(before, after, req, endpoint="healthz", kind="ok") == 1
    assert delta(
        before, after, "lockd_http_request_duration_seconds_count", endpoint="pre-reboot"
    ) == 8

    assert delta(before, after, "lockd_grants_total", group="workers") == 2
    assert delta(before, after, "lockd_releases_total", group="workers", by="node") == 1
    assert delta(before, after, "lockd_releases_total", group="workers", by="operator") == 1
    dec = "lockd_decisions_total"
    assert delta(before, after, dec, action="pre-reboot", outcome="granted") == 2
    assert delta(before, after, dec, action="pre-reboot", outcome="already_held") == 1
    assert delta(before, after, dec, action="pre-reboot", outcome="full") == 1
    assert delta(before, after, dec, action="pre-reboot", outcome="paused") == 2
    assert delta(before, after, dec, action="steady-state", outcome="not_held") == 1
    assert delta(before, after, dec, action="force-unlock", outcome="released") == 1
    assert delta(before, after, dec, action="pause", outcome="changed") == 1
    # only grants, releases and operator changes write (2 + 1 + 1 + 1)
    assert delta(
        before, after, "lockd_backend_request_duration_seconds_count", operation="compare_and_set"
    ) == 5
    assert delta(
        before, after, "lockd_backend_request_duration_seconds_count", operation="get"
    ) > 0
    # Every pre-reboot that reached the service looked at the view (lockd.view); the
    # refusals after the pause, whose own write filled it, came from it.
    view = "lockd_view_lookups_total"
    hits = delta(before, after, view, result="hit")
    assert hits + delta(before, after, view, result="miss") == 6
    assert hits >= 2
    assert value(after, "lockd_view_feed_connected") == 1
    assert value(after, "lockd_backend_errors_total", operation="get") == 0
    assert value(after, "lockd_backend_up") == 1

    # per-group gauges, read from the store at scrape time
    assert value(after, "lockd_config_groups") == 2
    assert value(after, "lockd_config_slots", group="workers") == 2
    assert value(after, "lockd_group_slots", group="workers") == 2
    assert value(after, "lockd_group_holders", group="workers") == 0
    assert value(after, "lockd_group_available_slots", group="workers") == 2
    assert value(after, "lockd_group_paused", group="workers") == 1
    assert value(after, "lockd_group_oldest_holder_age_seconds", group="workers") == 0
    assert value(after, "lockd_group_holders", group="default") == 0
    call(lockd.admin_url, "POST", "/api/v1/groups/workers/resume")
    assert lock(lockd.url, "pre-reboot", "node-c", "workers")[0] == 200
    later, _ = scrape(lockd.admin_url)
    assert value(later, "lockd_group_holders", group="workers") == 1
    assert value(later, "lockd_group_paused", group="workers") == 0
    assert value(later, "lockd_group_oldest_holder_age_seconds", group="workers") >= 0

    # no per-id labels, ever
    for samples in (after, later):
        assert {k for (_, labels) in samples for k, _ in labels} <= LABEL_NAMES
        assert not label_values(samples, "group") - {"workers", "default"}
    assert not any(i in text for i in ids)


def test_group_labels_stay_bounded(tmp_path: Path) -> None:
    server = start_lockd(tmp_path, "memory")
    try:
        extra = DEFAULT_GROUP_CAP + 10
        for i in range(extra):
            assert lock(server.url, "pre-reboot", f"id-{i}", f"g{i}")[0] == 200
        # a stream of invalid or refused groups admits nothing
        for i in range(5):
            assert lock(server.url, "pre-reboot", "x", f"bad_{i}")[0] == 400
        samples, text = scrape(server.admin_url)
    finally:
        server.stop()
    groups = label_values(samples, "group")
    seen = groups - {"workers", "default", OTHER_GROUP}
    assert len(seen) == DEFAULT_GROUP_CAP and seen <= {f"g{i}" for i in range(extra)}
    assert OTHER_GROUP in groups
    assert value(samples, "lockd_grants_total", group=OTHER_GROUP) == 10
    total = sum(v for (n, _), v in samples.items() if n == "lockd_grants_total")
    assert total == extra
    # gauges cover only the tracked groups: the cap, not the store, bounds them
    holders = [labels for (n, labels) in samples if n == "lockd_group_holders"]
    assert len(holders) == DEFAULT_GROUP_CAP + 2
    assert "id-" not in text and "bad_" not in text


def test_backend_errors_are_counted(tmp_path: Path) -> None:
    """A store that cannot be reached (nothing listens): 503s, errors counted, up = 0."""
    dead = f"redis://127.0.0.1:{free_port()}/0?timeout=1"
    server = Lockd(tmp_path, "--backend", dead).start()
    try:
        status, doc = lock(server.url, "pre-reboot", "node-a", "default")
        assert (status, doc["kind"]) == (503, "backend_unavailable")
        samples, _ = scrape(server.admin_url)
    finally:
        server.stop()
    assert value(samples, "lockd_backend_errors_total", operation="get") >= 1
    assert value(samples, "lockd_backend_up") == 0
    assert value(
        samples, "lockd_http_requests_total", endpoint="pre-reboot", kind="backend_unavailable"
    ) == 1
    assert value(
        samples, "lockd_decisions_total", action="pre-reboot", outcome="backend_unavailable"
    ) == 1


class Interloper(Backend):
    """Lets another service write the group between this service's read and its write, once:
    the interleaving two replicas produce on a shared store."""

    def __init__(self, store: MemoryBackend, other: LockService) -> None:
        self.store, self.other, self.done = store, other, False

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        got = await self.store.get(key)
        if not self.done:
            self.done = True
            assert await self.other.pre_reboot("workers", "intruder") is Outcome.GRANTED
        return got

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        return await self.store.compare_and_set(key, value, expected)

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        return await self.store.compare_and_delete(key, expected)

    async def scan(self, prefix: str) -> list[str]:
        return await self.store.scan(prefix)


async def test_cas_retries_are_counted() -> None:
    groups = GroupSettings(default_slots=1, slots={"workers": 3})
    store = MemoryBackend()
    other = LockService(Store(store, NativeLayout()), groups)
    metrics = Metrics(groups.slots)
    timed = TimedBackend(Interloper(store, other), metrics.observe_backend)
    service = LockService(Store(timed, NativeLayout()), groups)
    service.observers.append(metrics.observe)

    assert await service.pre_reboot("workers", "node-a") is Outcome.GRANTED
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
    }
    assert value(samples, "lockd_cas_retries_total", action="pre-reboot") == 1
    # the lost race: two CAS calls, the first refused
    assert value(
        samples, "lockd_backend_request_duration_seconds_count", operation="compare_and_set"
    ) == 2
    assert value(samples, "lockd_grants_total", group="workers") == 1
    sem = await service.read("workers")
    assert sem is not None and {h.id for h in sem.holders} == {"intruder", "node-a"}


def test_registries_are_private() -> None:
    """Two apps in one process each count their own requests."""
    a, b = Metrics(["x"]), Metrics(["x"])
    a.observe_request("pre-reboot", "ok", 0.01)
    assert b'lockd_http_requests_total{endpoint="pre-reboot",kind="ok"} 1.0' in a.exposition()
    assert b"lockd_http_requests_total{" not in b.exposition()


@pytest.mark.parametrize(("buckets", "bucket_line"), [
    (LATENCY_BUCKETS, b'x_seconds_bucket{a="p",le="0.0005"} 2.0'),
    # Whole numbers, as lockd_reboot_duration_seconds has them: written as floats.
    (REBOOT_BUCKETS, b'x_seconds_bucket{a="p",le="30.0"} 8.0'),
])
def test_loop_metrics_expose_what_prometheus_client_does(
        monkeypatch: Any, buckets: tuple[float, ...], bucket_line: bytes) -> None:
    """The lock-free counter and histogram (one worker) write the very text
    prometheus_client's Counter and Histogram write for the same observations: names,
    HELP, TYPE, label order, buckets (values on, between and past the bounds), _created."""
    monkeypatch.setattr(time, "time", lambda: 1234.5)  # both sides' _created
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counters = (LoopCounter("x_requests", "help", ["a", "b"], ours),
                Counter("x_requests", "help", ["a", "b"], registry=theirs))
    histograms = (LoopHistogram("x_seconds", "help", ["a"], ours, buckets),
                  Histogram("x_seconds", "help", ["a"], buckets=buckets, registry=theirs))
    for c in counters:
        c.labels("p", "q").inc()
        c.labels("r", 7).inc(2.5)
        c.labels("p", "q").inc()
    for h in histograms:
        for value in (0.0, 0.0005, 0.0007, 0.003, 0.3, 10.0, 11.0, 30, 1e9):
            h.labels("p").observe(value)
        h.labels("z")  # a label set never observed: all zero
    text = generate_latest(ours)
    assert text == generate_latest(theirs)
    assert b'x_requests_total{a="r",b="7"} 2.5' in text  # not vacuous
    assert bucket_line in text


def test_loop_metrics_refuse_a_wrong_label_count() -> None:
    counter = LoopCounter("x_requests", "help", ["a", "b"], CollectorRegistry())
    with pytest.raises(ValueError):
        counter.labels("only-one")


def test_loop_histogram_takes_buckets_as_prometheus_client_does() -> None:
    """Unsorted bounds are refused, and a +Inf given is not added twice, as by
    prometheus_client's Histogram."""
    for make in (lambda b, r: LoopHistogram("x_seconds", "help", ["a"], r, b),
                 lambda b, r: Histogram("x_seconds", "help", ["a"], buckets=b, registry=r)):
        with pytest.raises(ValueError):
            make((1.0, 0.5), CollectorRegistry())
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    LoopHistogram("x_seconds", "help", ["a"], ours, (1, float("inf"))).labels("p").observe(2)
    Histogram("x_seconds", "help", ["a"], buckets=(1, float("inf")),
              registry=theirs).labels("p").observe(2)
    assert generate_latest(ours).count(b"_bucket") == 2
    assert [line for line in generate_latest(ours).splitlines() if b"_bucket" in line] == \
        [line for line in generate_latest(theirs).splitlines() if b"_bucket" in line]
