"""Prometheus metrics, ``lockd_*``, in a registry of their own per application; under
``--workers N``, merged across the workers at each scrape (:data:`MULTIPROCESS`).

Each FleetLock application gets one :class:`Metrics` (``app[METRICS]``): a private
``CollectorRegistry``, so tests and several apps in one process never collide on the global
one. Three feeds fill it:

- the FleetLock listener's middleware (:func:`lockd.frontend.answer_and_count`): requests
  by endpoint and outcome kind (:func:`request_kind`, :func:`response_kind`), and their
  latency;
- :meth:`Metrics.observe`, a :class:`lockd.service.Decision` observer: decisions, grants,
  releases, compare-and-set retries;
- :meth:`Metrics.observe_backend`, called by :class:`lockd.store.TimedBackend` around the
  backend the service uses: latency and errors of every store operation.

Per-group gauges (slots, holders, oldest holder age, paused) are read from the store when
``/metrics`` is scraped (:meth:`Metrics.refresh`), so every replica shows the shared truth.

Cardinality stays bounded: a ``group`` label is only ever a configured group or one of the
first ``group_cap`` other groups that had a successful decision; any further group is counted
under ``_other``. No label ever carries a node id.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from lockd import policy as policies
from lockd.errors import LockdError
from lockd.fleetlock import route
from lockd.semaphore import Outcome, Semaphore
from lockd.service import Decision, LockService
from lockd.view import View

log = logging.getLogger("lockd.metrics")

#: What ``generate_latest`` writes; every Prometheus version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The label value that stands for every group beyond the cap.
OTHER_GROUP = "_other"
#: Non-configured groups that get series of their own; configured groups always do.
DEFAULT_GROUP_CAP = 50

#: Buckets for request and decision latency: a grant is a few ms on a local store and up to
#: the store timeout (10 s by default) when the store struggles.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Buckets for how long a node held its slot (grant to steady-state): a reboot takes a few
#: minutes; anything past hours is a node that came back late or never.
REBOOT_BUCKETS = (30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600, 7200, 14400, 43200)

#: Under ``--workers N`` every worker is started with PROMETHEUS_MULTIPROC_DIR (a private
#: directory of the supervisor's, lockd.workers): prometheus_client then keeps each
#: Counter, Histogram and Gauge in a file per process, and a scrape merges them all.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

#: The gauges read from the store at scrape: name -> (help, has a group label).
STORE_GAUGES: dict[str, tuple[str, bool]] = {
    "lockd_backend_up": ("1 if the store answered the last scrape's reads, else 0", False),
    "lockd_config_groups": ("Number of groups in the configuration", False),
    "lockd_config_mismatch": (
        "1 for a group whose configured slots here differ from what another replica's "
        "configuration wrote to the store (this replica does not overwrite it)", True),
    "lockd_config_slots": ("Configured slots, by group", True),
    "lockd_group_slots": ("Live slots in the store, by group", True),
    "lockd_group_holders": ("Holders in the store, by group", True),
    "lockd_group_available_slots": ("Free slots, by group", True),
    "lockd_group_paused": ("1 if an operator paused the group, by group", True),
    "lockd_group_oldest_holder_age_seconds": (
        "Age of the oldest holder's grant (0 without holders of known grant time), by group",
        True),
    "lockd_group_stale_holders": (
        "Holders that have held longer than the group's stale_after, by group", True),
    "lockd_group_window_open": (
        "1 if the group's reboot windows allow a new grant now (always 1 without "
        "windows), by group", True),
    "lockd_group_cooling_slots": (
        "Free slots not granted yet because they were freed less than cooldown ago", True),
}


class StoreGauges(Collector):
    """The gauges :meth:`Metrics.refresh` reads from the store, exposed as they were last
    read.

    A collector rather than prometheus_client Gauges because under workers a Gauge lives in
    one file per process and a scrape merges every worker's: a value read from the shared
    store would be summed N times, or shown stale from workers not scraped, and a group
    dropped by ``clear()`` would live on in the other files. Only the worker that answers
    the scrape reads the store and reports these, once.
    """

    def __init__(self) -> None:
        # Unlabelled gauges start at 0, as a prometheus_client Gauge does.
        self._values: dict[str, dict[tuple[str, ...], float]] = {
            n: {} if by_group else {(): 0.0} for n, (_, by_group) in STORE_GAUGES.items()
        }

    def set(self, name: str, value: float, group: str | None = None) -> None:
        self._values[name][() if group is None else (group,)] = value

    def clear(self) -> None:
        """Forget every per-group value (the unlabelled ones stay)."""
        for name, (_, by_group) in STORE_GAUGES.items():
            if by_group:
                self._values[name] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (help_text, by_group) in STORE_GAUGES.items():
            values = self._values[name]
            family = GaugeMetricFamily(name, help_text, labels=["group"] if by_group else None)
            for labels, value in values.items():
                family.add_metric(list(labels), value)
            yield family


class _LoopCount:
    """One label set's count of a :class:`LoopCounter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _LoopBuckets:
    """One label set's buckets of a :class:`LoopHistogram` (not cumulative: summed at
    collect, as prometheus_client does)."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bound >= amount: the bucket prometheus_client's observe picks.
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _LoopMetric(Collector):
    """A labelled counter or histogram for one process whose every update comes from the
    event loop's thread: plain floats, no lock. Hand-written because prometheus_client's
    Counter and Histogram take a threading lock on every increment (``MutexValue``), a few
    per cent of a refusal's CPU (issue #15, bench/RESULTS.md "Refusals, stop 11"); this
    exposes the very same samples (names, labels, order, ``_created``), which
    tests/test_metrics.py checks against prometheus_client's own on the same observations.
    Not under workers (:data:`MULTIPROCESS`): prometheus_client's files merge those."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: Any) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError("incorrect label count")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        created = prometheus_metrics._use_created  # PROMETHEUS_DISABLE_CREATED_SERIES
        for values, child in list(self._children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            self._samples(metric, labels, child)
            if created:
                metric.add_sample(self.name + "_created", labels, child.created)
        yield metric

    def _samples(self, metric: Metric, labels: dict[str, str], child: Any) -> None:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    """A prometheus_client ``Counter`` with labels, lock-free (:class:`_LoopMetric`)."""

    kind = "counter"

    def _new_child(self) -> _LoopCount:
        return _LoopCount()

    def _samples(self, metric: Metric, labels: dict[str, str], child: _LoopCount) -> None:
        metric.add_sample(self.name + "_total", labels, child.value)


class LoopHistogram(_LoopMetric):
    """A prometheus_client ``Histogram`` with labels, lock-free (:class:`_LoopMetric`)."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str],
                 registry: CollectorRegistry, buckets: Iterable[float]) -> None:
        # As prometheus_client's Histogram: sorted bounds, +Inf last (added if missing).
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("buckets not in sorted order")
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _LoopBuckets:
        return _LoopBuckets(self.bounds)

    def _samples(self, metric: Metric, labels: dict[str, str], child: _LoopBuckets) -> None:
        total = 0.0
        for bound, count in zip(self.bounds, child.counts, strict=True):
            total += count
            metric.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(bound)},
                              total)
        metric.add_sample(self.name + "_count", labels, total)
        metric.add_sample(self.name + "_sum", labels, child.sum)


def counter(name: str, documentation: str, labelnames: list[str],
            registry: CollectorRegistry) -> Any:
    """A labelled counter updated per request or decision: lock-free with one worker,
    prometheus_client's (one file per process, merged at scrape) under workers."""
    if MULTIPROCESS:
        return Counter(name, documentation, labelnames, registry=registry)
    return LoopCounter(name, documentation, labelnames, registry)


def histogram(name: str, documentation: str, labelnames: list[str],
              registry: CollectorRegistry,
              buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Any:
    """A labelled histogram updated per request or decision (latency buckets unless
    told), as :func:`counter`."""
    if MULTIPROCESS:
        return Histogram(name, documentation, labelnames, buckets=buckets, registry=registry)
    return LoopHistogram(name, documentation, labelnames, registry, buckets)


T = TypeVar("T")


class Metrics:
    """Every ``lockd_*`` metric of one lockd process, in its own registry."""

    def __init__(self, configured: Iterable[str] = (), group_cap: int = DEFAULT_GROUP_CAP) -> None:
        self.registry = CollectorRegistry()
        self.configured: set[str] = set(configured)
        self.group_cap = group_cap
        self._admitted: set[str] = set()
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._decision_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._backend_children: dict[str, Any] = {}
        self._group_children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry

        # Updated on every request and decision: lock-free with one worker (counter()).
        self.requests = counter(
            "lockd_http_requests",
            "FleetLock listener requests by endpoint and outcome kind ('ok' or an error kind)",
            ["endpoint", "kind"], r,
        )
        self.request_seconds = histogram(
            "lockd_http_request_duration_seconds",
            "FleetLock listener request latency by endpoint",
            ["endpoint"], r,
        )
        self.decisions = counter(
            "lockd_decisions",
            "Lock decisions by action and outcome (an outcome or an error kind)",
            ["action", "outcome"], r,
        )
        self.decision_seconds = histogram(
            "lockd_decision_duration_seconds",
            "Time to decide, compare-and-set retries included, by action",
            ["action"], r,
        )
        # Updated on every grant, release and store call: as lock-free (issue #15).
        self.grants = counter("lockd_grants", "Slots granted, by group", ["group"], r)
        self.releases = counter(
            "lockd_releases",
            "Slots released, by group and by whom (node: steady-state; operator: force-unlock)",
            ["group", "by"], r,
        )
        self.cas_retries = counter(
            "lockd_cas_retries",
            "Extra compare-and-set attempts decisions needed because another writer won "
            "(attempts - 1 per decision), by action",
            ["action"], r,
        )
        self.backend_seconds = histogram(
            "lockd_backend_request_duration_seconds",
            "Latency of store operations, by operation",
            ["operation"], r,
        )
        self.backend_errors = counter(
            "lockd_backend_errors",
            "Store operations that failed or timed out, by operation",
            ["operation"], r,
        )
        # Read from the store at each scrape (refresh): a collector of its own, not Gauges,
        # so that under workers the scraped worker alone reports them (see StoreGauges).
        self.store = StoreGauges()
        r.register(self.store)
        self.expiries = counter(
            "lockd_expiries",
            "Holders released by expire_after (by this replica), by group",
            ["group"], r,
        )
        self.reboot_seconds = histogram(
            "lockd_reboot_duration_seconds",
            "How long nodes held their slot, grant to steady-state (releases by the node "
            "decided by this replica), by group",
            ["group"], r, REBOOT_BUCKETS,
        )
        #: Under workers only: requests each live worker answered, by pid (to see how the
        #: kernel spreads connections; the other series are summed over workers).
        self.worker_requests = Gauge(
            "lockd_worker_requests",
            "FleetLock listener requests this worker answered since it started, by pid",
            registry=r, multiprocess_mode="liveall",
        ) if MULTIPROCESS else None
        self.gate_requests = Counter(
            "lockd_gate_requests",
            "Questions sent to health gates (cached answers not counted), by gate and answer",
            ["gate", "result"], registry=r,
        )
        self.gate_open = Gauge(
            "lockd_gate_open",
            "1 if the gate's last answer was open, 0 if closed or unreachable, by gate",
            ["gate"], registry=r,
            multiprocess_mode="mostrecent",  # under workers: the latest answer of any
        )
        self.notifications = Counter(
            "lockd_notifications_delivered",
            "Notification events delivered to a webhook",
            registry=r,
        )
        self.notification_retries = Counter(
            "lockd_notification_retries",
            "Notification deliveries retried after a failure", registry=r,
        )
        self.notifications_dropped = Counter(
            "lockd_notifications_dropped",
            "Notification events dropped: queue_full (the webhook's queue was full) or "
            "failed (every retry failed)",
            ["reason"], registry=r,
        )

    # Bounded group labels

    def group_label(self, group: str, admit: bool = False) -> str:
        """``group`` itself if it may have series, else ``_other``.

        ``admit`` lets a not yet known group take one of the ``group_cap`` places; only
        successful decisions admit, so a client sending random group names cannot.
        """
        if group in self.configured or group in self._admitted:
            return group
        if admit and len(self._admitted) < self.group_cap:
            self._admitted.add(group)
            return group
        return OTHER_GROUP

    def tracked_groups(self) -> list[str]:
        return sorted(self.configured | self._admitted)

    # Feeds

    def observe(self, d: Decision) -> None:
        """A :class:`lockd.service.Decision` observer."""
        # _value_ is what Enum's (Python-level) value property returns.
        outcome = d.outcome._value_ if d.outcome is not None else (
            d.error._value_ if d.error is not None else "error"
        )
        key = (d.action, outcome)
        children = self._decision_children.get(key)
        if children is None:  # cached, as for requests: this runs on every decision
            children = (self.decisions.labels(*key), self.decision_seconds.labels(d.action))
            self._decision_children[key] = children
        children[0].inc()
        children[1].observe(d.seconds)
        if d.attempts > 1:
            self.cas_retries.labels(d.action).inc(d.attempts - 1)
        if d.outcome is None:
            return
        group = self.group_label(d.group, admit=True)
        for event in d.events:
            if event.kind == "expiry":
                self.expiries.labels(group).inc()
            elif event.kind == "release" and event.by == "node" and event.held_seconds:
                self.reboot_seconds.labels(group).observe(event.held_seconds)
        if d.outcome is Outcome.GRANTED:
            self._child(self.grants, group).inc()
        elif d.outcome is Outcome.RELEASED:
            by = "operator" if d.action == "force-unlock" else "node"
            self._child(self.releases, group, by).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: labels() costs more than an increment, on
        every grant and release. Bounded as the labels are (group_label)."""
        key = (metric, labels)
        child = self._group_children.get(key)
        if child is None:
            child = self._group_children[key] = metric.labels(*labels)
        return child

    def observe_gate(self, gate: str, result: str) -> None:
        self.gate_requests.labels(gate, result).inc()
        self.gate_open.labels(gate).set(1 if result == "open" else 0)

    def observe_notification(self, outcome: str) -> None:
        if outcome == "delivered":
            self.notifications.inc()
        elif outcome == "retry":
            self.notification_retries.inc()
        else:
            self.notifications_dropped.labels(outcome.removeprefix("dropped_")).inc()

    def observe_backend(self, operation: str, seconds: float, ok: bool) -> None:
        if not ok:
            self.backend_errors.labels(operation).inc()
        # Children cached: labels() costs more than the observation, on every store call.
        child = self._backend_children.get(operation)
        if child is None:
            child = self._backend_children[operation] = self.backend_seconds.labels(operation)
        child.observe(seconds)

    def observe_request(self, endpoint: str, kind: str, seconds: float) -> None:
        # Children cached: this runs on every FleetLock request of a reboot storm.
        key = (endpoint, kind)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(endpoint, kind), self.request_seconds.labels(endpoint))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if self.worker_requests is not None:
            self.worker_requests.inc()

    async def refresh(self, service: LockService) -> None:
        """Read the tracked groups from the store into the per-group gauges."""
        self.configured = set(service.groups.slots)
        states: dict[str, Semaphore] = {}
        up = 1
        for group in self.tracked_groups():
            try:
                sem = await service.read(group)
            except LockdError as exc:
                if exc.kind.value.startswith("backend_"):
                    up = 0
                    break
                continue  # e.g. no longer configured under strict_groups
            if sem is None:
                slots = service.groups.slots_for(group)
                sem = Semaphore.new(slots) if slots is not None else None
            if sem is not None:
                states[group] = sem
        g = self.store
        g.set("lockd_backend_up", up)
        g.set("lockd_config_groups", len(service.groups.slots))
        if not up:
            return  # keep the last known values rather than pretend the groups are empty
        now = time.time()
        # No await from here on: a scrape never sees half-updated gauges.
        g.clear()
        for group, slots in service.groups.slots.items():
            g.set("lockd_config_slots", slots, group)
        for group, sem in states.items():
            g.set("lockd_group_slots", sem.slots, group)
            g.set("lockd_group_holders", len(sem.holders), group)
            g.set("lockd_group_available_slots", sem.available, group)
            g.set("lockd_group_paused", 1 if sem.paused else 0, group)
            # A holder granted by airlock or locksmith has no grant time (0): not counted.
            oldest = min((h.granted_at for h in sem.holders if h.granted_at > 0), default=None)
            g.set("lockd_group_oldest_holder_age_seconds",
                  0 if oldest is None else max(0.0, now - oldest), group)
            policy = service.policy_for(group)
            stale = sum(policies.is_stale(h, now, policy) for h in sem.holders)
            g.set("lockd_group_stale_holders", stale, group)
            g.set("lockd_group_window_open", 1 if policy.windows.is_open(now) else 0, group)
            cooling = sem.available - policies.grantable(sem, now, policy)
            g.set("lockd_group_cooling_slots", cooling, group)
        for group in service.config_mismatches:
            g.set("lockd_config_mismatch", 1, self.group_label(group))

    def watch_view(self, view: View) -> None:
        """Export the view's counters (lockd.view), read at each scrape: a hit costs the
        request nothing more than an integer increment.

        Under workers a scrape reads every worker's files, not this worker's view, so the
        view's counts are copied into multiprocess metrics instead: by :meth:`sync_view`,
        at each scrape of this worker and every :data:`VIEW_SYNC_S` (lockd.frontend)."""
        if not MULTIPROCESS:
            self.registry.register(ViewCollector(view))
            return
        r = self.registry
        lookups = Counter("lockd_view_lookups", VIEW_HELP["lockd_view_lookups"], ["result"],
                          registry=r)
        self._view_metrics = (
            lookups.labels("hit"), lookups.labels("miss"),
            Counter("lockd_view_resyncs", VIEW_HELP["lockd_view_resyncs"], registry=r),
            # "livemin": 1 only while the feed of every live worker is connected.
            Gauge("lockd_view_feed_connected", VIEW_HELP["lockd_view_feed_connected"],
                  registry=r, multiprocess_mode="livemin"),
        )
        self._view: View | None = view
        self._view_copied = (0, 0, 0)
        self.sync_view()

    def sync_view(self) -> None:
        """Under workers: add what the view counted since the last copy (see watch_view)."""
        view = getattr(self, "_view", None)
        if view is None:
            return
        hit, miss, resyncs, connected = self._view_metrics
        now = (view.hits, view.misses, view.resyncs)
        for child, before, after in zip((hit, miss, resyncs), self._view_copied, now,
                                        strict=True):
            if after > before:
                child.inc(after - before)
        self._view_copied = now
        connected.set(1 if view.connected else 0)

    def exposition(self) -> bytes:
        if not MULTIPROCESS:
            return generate_latest(self.registry)
        # Workers: counters, histograms and event gauges from every worker's files (summed,
        # or as each gauge's multiprocess_mode says), the store's gauges from this one.
        self.sync_view()
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        merged.register(self.store)
        return generate_latest(merged)

    def response(self) -> web.Response:
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE})


METRICS = web.AppKey("metrics", Metrics)


#: The view's metrics (lockd.view): help texts, shared by both ways of exporting them.
VIEW_HELP = {
    "lockd_view_lookups": "Pre-reboots the view looked at, by result: hit (refused from the "
    "view, no store round trip) or miss (decided on the store)",
    "lockd_view_feed_connected": "1 while the store's change feed is connected (the view may "
    "answer), else 0; under workers, 1 only while every worker's is",
    "lockd_view_resyncs": "Times the change feed was (re)subscribed, each emptying the view",
}
#: Under workers: seconds between two copies of a worker's view counts (Metrics.sync_view).
VIEW_SYNC_S = 5.0


class ViewCollector:
    """``lockd_view_*``: answers the view gave and could not give, and its feed's state."""

    def __init__(self, view: View) -> None:
        self.view = view

    def describe(self) -> list[Any]:
        return []  # not known before the first collect; prometheus_client then calls it

    def collect(self) -> Iterable[Any]:
        v = self.view
        answers = CounterMetricFamily(
            "lockd_view_lookups", VIEW_HELP["lockd_view_lookups"], labels=["result"]
        )
        answers.add_metric(["hit"], v.hits)
        answers.add_metric(["miss"], v.misses)
        yield answers
        yield GaugeMetricFamily(
            "lockd_view_feed_connected", VIEW_HELP["lockd_view_feed_connected"],
            value=1 if v.connected else 0,
        )
        yield CounterMetricFamily(
            "lockd_view_resyncs", VIEW_HELP["lockd_view_resyncs"], value=v.resyncs
        )


@functools.lru_cache(maxsize=256)  # bounded: paths are the client's; a storm sends two
def endpoint_of(path: str) -> str:
    """A bounded endpoint label for a FleetLock listener path."""
    match = route(path)
    if match is not None:
        return match[1]
    if path in ("/healthz", "/readyz"):
        return path[1:]
    return "other"


def request_kind(exc: BaseException) -> str:
    """The ``kind`` label of a FleetLock listener request that raised ``exc``."""
    if isinstance(exc, LockdError):
        return exc.kind.value
    if isinstance(exc, web.HTTPException):
        return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "invalid_request" if exc.status < 500 else "internal_error"
        )
    return "internal_error"


def response_kind(response: web.StreamResponse) -> str:
    """The ``kind`` label of a FleetLock listener request answered ``response``."""
    if response.status < 400:
        return "ok"
    # A refusal answered without raising carries its kind (lockd.frontend.refused).
    return getattr(response, "lockd_kind", None) or f"http_{response.status}"
