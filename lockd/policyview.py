"""The reboot policy as the admin API shows it (and through it ``lockd status`` and the status
page): each group's windows and whether one is open, stale and expiring holders, the
cooldown, the health gates' last answers and the recent reboots."""

from __future__ import annotations

import time
from typing import Any

from lockd import policy as policies
from lockd.policy import GroupPolicy
from lockd.semaphore import Semaphore
from lockd.service import LockService
from lockd.windows import Schedule, format_instant


def extend(view: dict[str, Any], service: LockService, group: str, sem: Semaphore,
           now: float) -> dict[str, Any]:
    """Add the reboot policy to an admin group view (``lockd.admin.group_view``)."""
    policy = service.policy_for(group)
    by_id = {h.id: h for h in sem.holders}
    for holder in view["holders"]:
        h = by_id.get(holder["id"])
        if h is None:
            continue
        holder["stale"] = policies.is_stale(h, now, policy)
        expires = None
        if policy.expire_after is not None and h.granted_at > 0:
            expires = h.granted_at + policy.expire_after
        holder["expires_at"] = expires
        holder["expires_at_iso"] = None if expires is None else format_instant(expires, "UTC")
    view["stale_holders"] = sum(1 for h in view["holders"] if h.get("stale"))
    view["policy"].update(policy_view(service, policy, sem, now))
    view["history"] = [
        {
            "id": r.id, "grant_id": r.grant_id or None,
            "granted_at": r.granted_at or None, "released_at": r.released_at,
            "released_at_iso": format_instant(r.released_at, "UTC"),
            "seconds": None if r.seconds is None else round(r.seconds, 3), "ended": r.ended,
        }
        for r in reversed(sem.policy.reboots)  # newest first
    ]
    return view


def policy_view(
    service: LockService, policy: GroupPolicy, sem: Semaphore, now: float
) -> dict[str, Any]:
    cooling = sem.available - policies.grantable(sem, now, policy)
    until = policies.cooldown_ends(sem, now, policy)
    last = sem.policy.last_release_at
    return {
        "windows": windows_view(policy.windows, now),
        "stale_after_seconds": policy.stale_after,
        "expire_after_seconds": policy.expire_after,
        "cooldown": {
            "seconds": policy.cooldown,
            "cooling_slots": cooling,
            "until": until,
            "until_iso": None if until is None else format_instant(until, "UTC"),
            "last_release_at": last,
        },
        "history_size": policy.history,
        "gates": [gate_view(service, name) for name in policy.gates],
        "stores_policy_state": bool(service.layout.stores_policy_state),
    }


def windows_view(schedule: Schedule, now: float) -> dict[str, Any]:
    """``open``: whether a new grant is allowed now; the next change either way."""
    opens = None if schedule.is_open(now) else schedule.next_open(now)
    closes = schedule.next_close(now)

    def iso(ts: float | None) -> str | None:
        if ts is None:
            return None
        w = schedule.window_at(ts) or schedule.window_at(ts - 1)
        return format_instant(ts, w.zone if w is not None else "UTC")

    return {
        "configured": [w.describe() for w in schedule.windows],
        "open": schedule.is_open(now),
        "next_open": opens,
        "next_open_iso": iso(opens),
        "closes_at": closes,
        "closes_at_iso": iso(closes),
    }


def gate_view(service: LockService, name: str) -> dict[str, Any]:
    gate = service.gates.gates.get(name)
    last = service.gates.last.get(name)
    view: dict[str, Any] = {
        "name": name, "kind": gate.kind if gate is not None else None,
        "state": None, "reason": None, "asked_at": None, "age_seconds": None,
    }
    if last is not None:
        verdict, at = last
        view.update(state=verdict.state, reason=verdict.reason or None, asked_at=at,
                    age_seconds=round(max(0.0, time.time() - at), 3))
    return view
