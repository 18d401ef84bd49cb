"""Notifications delivered to a real receiver the test starts: bodies, templates, retries
with backoff after failures, and a bounded queue that drops (and counts) rather than block."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from lockd.notify import Notifier, NotifySettings, Webhook
from lockd.policy import Event
from tests.receivers import Receiver


def event(kind: str = "grant", id_: str = "node-a", group: str = "workers") -> Event:
    return Event(kind, group, id_, 7, 1_800_000_000.0, 1_800_000_312.0,
                 "node" if kind == "release" else None)


def notifier(*hooks: Webhook, **settings: float) -> tuple[Notifier, Counter[str]]:
    seen: Counter[str] = Counter()
    s = NotifySettings(webhooks=hooks, **{"backoff": 0.01, "backoff_max": 0.05, **settings})
    return Notifier(s, lambda outcome: seen.update([outcome])), seen


async def test_events_are_posted_as_json() -> None:
    with Receiver() as rx:
        n, seen = notifier(Webhook(rx.url + "/lockd"))
        await n.start()
        try:
            n.publish(event("grant"))
            n.publish(event("release"))
            await n.drain(10)
        finally:
            await n.close()
        bodies = [r.json() for r in rx.requests("/lockd")]
    assert [b["event"] for b in bodies] == ["grant", "release"]
    assert bodies[1] == {
        "event": "release", "group": "workers", "id": "node-a", "grant_id": 7,
        "granted_at": 1_800_000_000.0, "at": 1_800_000_312.0,
        "at_iso": "2027-01-15T08:05:12+00:00[UTC]", "held_seconds": 312.0, "by": "node",
    }
    assert rx.requests()[0].headers["Content-Type"] == "application/json"
    assert seen == Counter(delivered=2)


async def test_a_template_feeds_a_chat_webhook_and_stays_json() -> None:
    with Receiver() as rx:
        hook = Webhook(rx.url, template='{"text": "lockd: $text", "who": "$id"}',
                       events=("release",), groups=("workers",))
        n, _ = notifier(hook)
        await n.start()
        try:
            n.publish(event("grant"))  # not wanted: events
            n.publish(event("release", group="db"))  # not wanted: groups
            n.publish(event("release", id_='evil"node\\'))
            await n.drain(10)
        finally:
            await n.close()
        (only,) = rx.requests()
    doc = json.loads(only.body)
    assert doc == {"text": 'lockd: evil"node\\ is back in group workers (held 5m12s)',
                   "who": 'evil"node\\'}


async def test_failures_are_retried_with_backoff_then_delivered() -> None:
    with Receiver(answers=[500, 503]) as rx:
        n, seen = notifier(Webhook(rx.url), retries=5)
        await n.start()
        try:
            n.publish(event())
            await n.drain(10)
        finally:
            await n.close()
        attempts = rx.requests()
    assert len(attempts) == 3 and len({a.body for a in attempts}) == 1
    assert seen == Counter(retry=2, delivered=1)


async def test_an_event_is_dropped_after_its_retries_and_counted() -> None:
    with Receiver(answers=[500] * 10) as rx:
        n, seen = notifier(Webhook(rx.url), retries=2)
        await n.start()
        try:
            n.publish(event())
            await n.drain(10)
        finally:
            await n.close()
        assert len(rx.requests()) == 3
    assert seen == Counter(retry=2, dropped_failed=1)


async def test_a_full_queue_drops_and_never_blocks() -> None:
    with Receiver(delay=0.5) as rx:
        n, seen = notifier(Webhook(rx.url), queue_size=2)
        await n.start()
        try:
            started = time.perf_counter()
            n.publish(event(id_="n0"))
            await asyncio.sleep(0.1)  # n0 is on the wire
            for i in range(1, 6):
                n.publish(event(id_=f"n{i}"))
            assert time.perf_counter() - started < 0.3  # publishing never waits
            await n.drain(10)
        finally:
            await n.close()
        delivered = [r.json()["id"] for r in rx.requests()]
    assert delivered == ["n0", "n1", "n2"]
    assert seen == Counter(delivered=3, dropped_queue_full=3)


async def test_an_unreachable_receiver_does_not_hold_up_another() -> None:
    from bench.procs import free_port

    with Receiver() as rx:
        dead = Webhook(f"http://127.0.0.1:{free_port()}/", timeout=0.5)
        n, seen = notifier(dead, Webhook(rx.url), retries=3)
        await n.start()
        try:
            n.publish(event())
            for _ in range(100):  # the live one gets it while the dead one retries
                if rx.requests():
                    break
                await asyncio.sleep(0.02)
        finally:
            await n.close(grace=0)
    assert seen["delivered"] == 1
