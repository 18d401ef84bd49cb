"""Notifications: a JSON ``POST`` to configured webhooks when a holder is granted, released,
expired or turns stale.

Fed by the service's decisions (a :class:`lockd.service.Decision` observer), so an event is
sent by the replica whose compare-and-set committed it, once. Delivery never blocks or fails
a FleetLock request: events go into a bounded queue per webhook and a background task posts
them in order, retrying with exponential backoff (full jitter) on a failure, i.e. no answer
or anything but a 2xx. When a queue is full, or an event has used up its retries, it is
dropped and counted (``lockd_notifications_dropped_total{reason}``).

The body is the event as JSON (:meth:`lockd.policy.Event.fields`), or ``template`` filled
in with ``string.Template`` (``$group``, ``$id``, ``$event``, ``$at_iso``, ``$held_seconds``,
``$by``, ``$grant_id``, ``$text``): values are JSON-escaped, so a template like
``{"text": "$text"}`` stays valid JSON whatever a node id holds, and feeds a chat webhook.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from lockd.durations import format_duration
from lockd.policy import Event
from lockd.service import stop

if TYPE_CHECKING:
    from lockd.service import Decision

log = logging.getLogger("lockd.notify")

EVENTS = ("grant", "release", "expiry", "stale")


@dataclass(frozen=True)
class Webhook:
    """One notification target."""

    url: str
    template: str | None = None
    events: tuple[str, ...] = EVENTS
    groups: tuple[str, ...] = ()  # empty: every group
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    def wants(self, event: Event) -> bool:
        return event.kind in self.events and (not self.groups or event.group in self.groups)

    def body(self, event: Event) -> bytes:
        fields = event.fields()
        if self.template is None:
            return json.dumps(fields, separators=(",", ":")).encode()
        values = {k: "" if v is None else _escape(str(v)) for k, v in fields.items()}
        values["text"] = _escape(describe(event))
        return string.Template(self.template).safe_substitute(values).encode()


@dataclass(frozen=True)
class NotifySettings:
    webhooks: tuple[Webhook, ...] = ()
    queue_size: int = 1000
    retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0


def describe(event: Event) -> str:
    """One line for a person: ``node-a is back in group workers (held 5m12s)``."""
    held = "" if event.held_seconds is None else f" (held {format_duration(event.held_seconds)})"
    if event.kind == "grant":
        return f"{event.id} may reboot now in group {event.group}"
    if event.kind == "release":
        by = " (released by an operator)" if event.by == "operator" else ""
        return f"{event.id} is back in group {event.group}{held}{by}"
    if event.kind == "expiry":
        return f"{event.id}'s slot in group {event.group} expired{held}"
    return f"{event.id} has held its slot in group {event.group} for long{held}"


def _escape(text: str) -> str:
    return json.dumps(text)[1:-1]


#: Called with "delivered", "retry", "dropped_queue_full" or "dropped_failed" for each
#: event delivered, retried or dropped; feeds the lockd_notification* metrics.
Observe = Callable[[str], None]


class Notifier:
    """The decision observer that queues events, and the tasks that deliver them."""

    def __init__(self, settings: NotifySettings, observe: Observe | None = None) -> None:
        self.settings = settings
        self.observe = observe or (lambda outcome: None)
        self._queues: list[asyncio.Queue[tuple[Event, bytes]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def wants_stale(self) -> bool:
        return any("stale" in w.events for w in self.settings.webhooks)

    async def start(self) -> None:
        if not self.settings.webhooks:
            return
        self._session = aiohttp.ClientSession()
        for hook in self.settings.webhooks:
            queue: asyncio.Queue[tuple[Event, bytes]] = asyncio.Queue(self.settings.queue_size)
            self._queues.append(queue)
            self._tasks.append(asyncio.get_running_loop().create_task(self._deliver(hook, queue)))

    def __call__(self, decision: Decision) -> None:
        for event in decision.events:
            self.publish(event)

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every webhook that wants it; never blocks."""
        for hook, queue in zip(self.settings.webhooks, self._queues, strict=False):
            if not hook.wants(event):
                continue
            try:
                queue.put_nowait((event, hook.body(event)))
            except asyncio.QueueFull:
                self.observe("dropped_queue_full")
                log.warning("notification queue for %s is full; %s event for %r dropped",
                            _host(hook.url), event.kind, event.id)

    async def _deliver(self, hook: Webhook, queue: asyncio.Queue[tuple[Event, bytes]]) -> None:
        while True:
            event, body = await queue.get()
            try:
                await self._send(hook, event, body)
            finally:
                queue.task_done()

    async def _send(self, hook: Webhook, event: Event, body: bytes) -> None:
        s = self.settings
        headers = {"Content-Type": hook.content_type, **dict(hook.headers)}
        for attempt in range(s.retries + 1):
            problem = await self._post(hook, body, headers)
            if problem is None:
                self.observe("delivered")
                return
            if attempt == s.retries:
                break
            self.observe("retry")
            delay = random.uniform(0, min(s.backoff_max, s.backoff * 2**attempt))
            log.info("notification to %s failed (%s); retry %d in %.1f s",
                     _host(hook.url), problem, attempt + 1, delay)
            await asyncio.sleep(delay)
        self.observe("dropped_failed")
        log.warning("notification to %s dropped after %d attempts: %s event for %r",
                    _host(hook.url), s.retries + 1, event.kind, event.id)

    async def _post(self, hook: Webhook, body: bytes, headers: dict[str, str]) -> str | None:
        assert self._session is not None
        try:
            async with self._session.post(
                hook.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
            ) as resp:
                await resp.read()
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return type(exc).__name__

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for queued events to be delivered (tests, shutdown)."""
        try:
            async with asyncio.timeout(timeout):
                for queue in self._queues:
                    await queue.join()
        except TimeoutError:
            pass

    async def close(self, grace: float = 2.0) -> None:
        await self.drain(grace)
        await asyncio.gather(*(stop(task) for task in self._tasks), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _host(url: str) -> str:
    """Where a webhook is, for logs, without its path (chat webhook paths are secrets)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

