"""Health gates: what must say "yes" before a group grants a slot.

Two kinds, each configured by name (``[[gates.prometheus]]``, ``[[gates.webhook]]``) and
picked per group (``gates = [...]``):

- **prometheus**: closed while matching alerts fire, kured's model. Asks Prometheus'
  ``/api/v1/alerts`` (``api = "prometheus"``, pending alerts count unless ``firing_only``) or
  an Alertmanager's ``/api/v2/alerts`` (``api = "alertmanager"``: active alerts only, so
  silenced and inhibited ones do not block). ``include`` / ``exclude`` patterns pick the
  alerts that count: ``"NodeDown.*"`` is a regular expression on the alert name,
  ``"severity=critical|page"`` one on a label; both match in full, as Prometheus' do.
- **webhook**: ``POST`` of ``{"gate", "group", "id"}`` as JSON to a URL; a 2xx answer opens
  the gate, a 5xx or no answer (refused, timed out) leaves it unreachable, any other answer
  closes it (its body, shortened, is the reason the node is told).

Gates fail closed: a gate that cannot be asked refuses with ``failed_lock_gate_unreachable``.
Answers, failures included, are cached for ``cache_s`` seconds (per gate for Prometheus, per
gate, group and node for a webhook, whose answer may depend on the node), and concurrent
requests share one question in flight, so a reboot storm does not become a storm on
Prometheus. The service asks the gates only for a request that would otherwise be granted
(lockd.policy.lock), never for a holder's re-lock or an unlock.

This module does I/O; the pure model only ever sees the :class:`lockd.policy.GateVerdict`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from lockd.policy import OPEN, GateVerdict

log = logging.getLogger("lockd.gates")

#: How much of a webhook's refusal body is passed on to the node.
MAX_REASON = 200
#: Alerts named in a closed gate's reason.
MAX_NAMED_ALERTS = 3
#: Cached answers kept at most (webhook answers are per node).
MAX_CACHED = 10_000
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class AlertPattern:
    """``REGEX`` on the alert name, or ``label=REGEX`` on a label; matched in full."""

    text: str
    label: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> AlertPattern:
        label, eq, rest = text.partition("=")
        if eq and _LABEL.fullmatch(label):
            name, pattern = label, rest
        else:
            name, pattern = "alertname", text
        try:
            return cls(text, name, re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"pattern {text!r} is not a regular expression: {exc}") from None

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return self.regex.fullmatch(str(labels.get(self.label, ""))) is not None


@dataclass(frozen=True)
class PrometheusGate:
    name: str
    url: str
    api: str = "prometheus"
    include: tuple[AlertPattern, ...] = ()
    exclude: tuple[AlertPattern, ...] = ()
    firing_only: bool = False
    timeout: float = 2.0

    kind = "prometheus"

    def cache_key(self, group: str, id: str) -> tuple[str, ...]:
        return (self.name,)

    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        if self.api == "alertmanager":
            # Active only: silenced and inhibited alerts are "suppressed" and do not block.
            return f"{base}/api/v2/alerts?active=true&silenced=false&inhibited=false"
        return f"{base}/api/v1/alerts"

    def blocking(self, doc: Any) -> list[Mapping[str, Any]]:
        """The alerts in an API answer that close this gate; ValueError if the answer is
        not one of that API."""
        if self.api == "alertmanager":
            if not isinstance(doc, list):
                raise ValueError("not an Alertmanager /api/v2/alerts answer")
            alerts = [
                a for a in doc
                if isinstance(a, dict) and (a.get("status") or {}).get("state") == "active"
            ]
        else:
            if not isinstance(doc, dict) or doc.get("status") != "success":
                raise ValueError("not a Prometheus /api/v1/alerts answer")
            alerts = [a for a in doc["data"]["alerts"] if isinstance(a, dict)]
            states = ("firing",) if self.firing_only else ("firing", "pending")
            alerts = [a for a in alerts if a.get("state") in states]
        found = []
        for alert in alerts:
            labels = alert.get("labels") or {}
            if self.include and not any(p.matches(labels) for p in self.include):
                continue
            if any(p.matches(labels) for p in self.exclude):
                continue
            found.append(labels)
        return found


@dataclass(frozen=True)
class WebhookGate:
    name: str
    url: str
    timeout: float = 2.0
    headers: tuple[tuple[str, str], ...] = ()

    kind = "webhook"

    def cache_key(self, group: str, id: str) -> tuple[str, ...]:
        return (self.name, group, id)


Gate = PrometheusGate | WebhookGate
#: (gate name, result "open"|"closed"|"unreachable"), called for every question actually
#: sent (not for cached answers); feeds lockd_gate_requests_total.
Observe = Callable[[str, str], None]


class Gates:
    """The configured gates, their cache and the HTTP client that asks them."""

    def __init__(
        self,
        gates: Sequence[Gate] = (),
        cache_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        observe: Observe | None = None,
    ) -> None:
        self.clock = clock
        self.observe = observe
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[tuple[str, ...], asyncio.Future[GateVerdict]] = {}
        self.reconfigure(gates, cache_s)

    def reconfigure(self, gates: Sequence[Gate], cache_s: float) -> None:
        """Adopt new gate definitions (start-up, SIGHUP); cached answers are dropped."""
        self.gates: dict[str, Gate] = {g.name: g for g in gates}
        self.cache_s = cache_s
        self._cache: dict[tuple[str, ...], tuple[float, GateVerdict]] = {}
        #: gate name -> (last verdict, wall-clock time it was asked), for status views.
        self.last: dict[str, tuple[GateVerdict, float]] = {}

    async def check(self, names: Sequence[str], group: str, id: str) -> GateVerdict:
        """Every gate in ``names``, asked concurrently: open if all are open; else the first
        closed one, else the first unreachable one."""
        if not names:
            return OPEN
        verdicts = await asyncio.gather(*(self.ask(n, group, id) for n in names))
        for state in ("closed", "unreachable"):
            for v in verdicts:
                if v.state == state:
                    return v
        return OPEN

    async def ask(self, name: str, group: str, id: str) -> GateVerdict:
        gate = self.gates.get(name)
        if gate is None:  # configuration checks names; a reload race must still fail closed
            return GateVerdict("unreachable", name, "no such gate is configured")
        key = gate.cache_key(group, id)
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.ensure_future(self._ask_and_cache(gate, key, group, id))
            self._inflight[key] = running
            running.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(running)

    async def _ask_and_cache(
        self, gate: Gate, key: tuple[str, ...], group: str, id: str
    ) -> GateVerdict:
        try:
            if isinstance(gate, PrometheusGate):
                verdict = await self._prometheus(gate)
            else:
                verdict = await self._webhook(gate, group, id)
        except Exception as exc:  # any failure to get an answer fails closed
            log.exception("gate %r: unexpected failure", gate.name)
            verdict = GateVerdict("unreachable", gate.name, type(exc).__name__)
        if verdict.state == "unreachable":
            log.warning("gate %r unreachable: %s", gate.name, verdict.reason)
        if len(self._cache) >= MAX_CACHED:
            now = self.clock()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = (self.clock() + self.cache_s, verdict)
        self.last[gate.name] = (verdict, time.time())
        if self.observe is not None:
            self.observe(gate.name, verdict.state)
        return verdict

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _prometheus(self, gate: PrometheusGate) -> GateVerdict:
        url = gate.endpoint()
        try:
            async with self._client().get(
                url, timeout=aiohttp.ClientTimeout(total=gate.timeout), allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    reason = f"{gate.api} answered {resp.status}"
                    return GateVerdict("unreachable", gate.name, reason)
                doc = json.loads(await resp.read())
            alerts = gate.blocking(doc)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return GateVerdict("unreachable", gate.name, _describe(exc, gate.api, url))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("gate %r: %s answered something unexpected: %s", gate.name, url, exc)
            return GateVerdict("unreachable", gate.name, f"unexpected answer from {gate.api}")
        if not alerts:
            return GateVerdict("open", gate.name)
        names = [str(a.get("alertname", "?")) for a in alerts[:MAX_NAMED_ALERTS]]
        more = len(alerts) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more else "")
        word = "alert" if len(alerts) == 1 else "alerts"
        return GateVerdict("closed", gate.name, f"{len(alerts)} {word} active: {listed}")

    async def _webhook(self, gate: WebhookGate, group: str, id: str) -> GateVerdict:
        body = json.dumps({"gate": gate.name, "group": group, "id": id}).encode()
        headers = {"Content-Type": "application/json", **dict(gate.headers)}
        try:
            async with self._client().post(
                gate.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=gate.timeout),
            ) as resp:
                status = resp.status
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return GateVerdict("unreachable", gate.name, _describe(exc, "the webhook", gate.url))
        if 200 <= status < 300:
            return GateVerdict("open", gate.name)
        if status >= 500:
            return GateVerdict("unreachable", gate.name, f"the webhook answered {status}")
        said = " ".join(text.split())[:MAX_REASON]
        said = "".join(c for c in said if c.isprintable())
        return GateVerdict(
            "closed", gate.name, f"the webhook answered {status}" + (f": {said}" if said else "")
        )

    async def close(self) -> None:
        for running in list(self._inflight.values()):
            running.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException, what: str, url: str) -> str:
    """A reason for the node that names no address (the log has it): gate URLs are the
    operator's business, and may carry credentials."""
    log.warning("gate request to %s failed: %s: %s", url, type(exc).__name__, exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"{what} did not answer in time"
    return f"{what} cannot be reached"
