"""The reboot policy of a group, as pure transitions over :mod:`lockd.semaphore`.

A group's :class:`GroupPolicy` (from configuration) adds, around the FleetLock semaphore:

- reboot windows (:mod:`lockd.windows`): outside every window a *new* grant is refused;
- ``stale_after``: holders older than it are shown as stale (and reported once);
- ``expire_after``: holders older than it are released (off by default);
- ``cooldown``: a freed slot is not granted again for that long;
- ``history``: the last N finished reboots are kept in the group's document;
- ``gates``: health gates that must be open before a grant. Asking them is I/O, done by the
  service (:mod:`lockd.gates`) before the compare-and-set loop; their answer is passed in.

Every decision is made here with the clock passed in, inside the service's one
compare-and-set loop, so two replicas can never both act on one state. A holder's re-lock
and every unlock are always allowed: only a new grant is subject to windows, cooldown and
gates. An expired holder no longer holds: every decision (and the sweep) first releases the
holders that have expired, so an expired node's next pre-reboot is a new request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lockd import semaphore
from lockd.durations import format_duration
from lockd.errors import Kind, LockdError
from lockd.policystate import PolicyState, Reboot
from lockd.semaphore import Holder, Outcome, Semaphore
from lockd.windows import Schedule, format_instant

#: Release times kept for the cooldown: one per slot, at most this many.
MAX_RELEASES = 256
#: Finished reboots kept per group, at most (each is ~100 bytes of the document).
MAX_HISTORY = 1000
DEFAULT_HISTORY = 20


@dataclass(frozen=True)
class GateVerdict:
    """What a group's health gates answered: ``open``, ``closed`` or ``unreachable``, and
    for a refusal which gate said so and why."""

    state: str
    gate: str = ""
    reason: str = ""

    @property
    def open(self) -> bool:
        return self.state == "open"


OPEN = GateVerdict("open")


@dataclass(frozen=True)
class GroupPolicy:
    """One group's reboot policy, all of it optional. The defaults change nothing."""

    windows: Schedule = field(default_factory=Schedule)
    stale_after: float | None = None
    expire_after: float | None = None
    cooldown: float = 0.0
    history: int = 0
    gates: tuple[str, ...] = ()
    #: Record stale holders in the document so that each is reported exactly once; only
    #: where the layout stores policy state (the service turns it off elsewhere).
    report_stale: bool = False

    @property
    def sweeps(self) -> bool:
        """Whether the periodic sweep has anything to do for this group."""
        return self.expire_after is not None or (
            self.report_stale and self.stale_after is not None
        )

    def stateless(self) -> GroupPolicy:
        """This policy without what needs state in the document (for layouts that cannot
        store it): windows, stale marking for display, and gates remain."""
        return replace(self, expire_after=None, cooldown=0.0, history=0, report_stale=False)


def is_stale(h: Holder, now: float, policy: GroupPolicy) -> bool:
    return (
        policy.stale_after is not None
        and h.granted_at > 0
        and now - h.granted_at >= policy.stale_after
    )


def is_expired(h: Holder, now: float, policy: GroupPolicy) -> bool:
    return (
        policy.expire_after is not None
        and h.granted_at > 0
        and now - h.granted_at >= policy.expire_after
    )


def cooling(sem: Semaphore, now: float, policy: GroupPolicy) -> list[float]:
    """Release times whose slot is still cooling down at ``now``, oldest first."""
    if policy.cooldown <= 0:
        return []
    return sorted(t for t in sem.policy.releases if 0 <= now - t < policy.cooldown)


def grantable(sem: Semaphore, now: float, policy: GroupPolicy) -> int:
    """Free slots that are not cooling down."""
    return max(0, sem.available - len(cooling(sem, now, policy)))


def cooldown_ends(sem: Semaphore, now: float, policy: GroupPolicy) -> float | None:
    """When the cooldown next lets a free slot be granted; None if one can be now (or none
    is free anyway)."""
    if sem.available <= 0 or grantable(sem, now, policy) > 0:
        return None
    times = cooling(sem, now, policy)
    # Enough cooling releases must age out for one free slot to remain.
    k = len(times) - sem.available
    return times[k] + policy.cooldown


# Transitions


def _released(
    sem: Semaphore, h: Holder, now: float, policy: GroupPolicy, ended: str
) -> Semaphore:
    """``sem`` after ``h`` leaves, with the release recorded for the cooldown and history."""
    state = sem.policy
    releases: tuple[float, ...] = ()
    if policy.cooldown > 0:
        keep = min(max(sem.slots, 1), MAX_RELEASES)
        recent = [t for t in (*state.releases, now) if 0 <= now - t < policy.cooldown]
        releases = tuple(recent[-keep:])
    reboots = state.reboots
    if policy.history > 0:
        entry = Reboot(h.id, h.grant_id, h.granted_at, now, ended)
        reboots = (*reboots, entry)[-policy.history :]
    else:
        reboots = ()
    reported = (tuple([g for g in state.stale_reported if g != h.grant_id])
                if state.stale_reported else ())
    return semaphore.released(sem, h.id, PolicyState(releases, reboots, reported))


def expire(sem: Semaphore, now: float, policy: GroupPolicy) -> Semaphore:
    """Release every holder that has held for ``expire_after`` or longer."""
    if policy.expire_after is None:  # the common case costs nothing per holder
        return sem
    for h in [h for h in sem.holders if is_expired(h, now, policy)]:
        sem = _released(sem, h, now, policy, "expiry")
    return sem


def lock(
    sem: Semaphore, id: str, now: float, policy: GroupPolicy,
    gate: GateVerdict | None = None,
) -> tuple[Semaphore, Outcome]:
    """RecursiveLock under the group's policy.

    In this order: expired holders are released; a holder re-locks (200, nothing new); then
    a new grant is refused while paused, outside every window, with no free slot, with every
    free slot cooling down, and while the health gates are not open. ``gate`` None means
    "not asked yet": a request that passes everything else then answers GATE_PENDING and the
    service asks the gates and decides again, so that gates are asked only for requests that
    would be granted.
    """
    sem = expire(sem, now, policy)
    if sem.holder(id) is not None:
        return sem, Outcome.ALREADY_HELD
    if sem.paused:
        return sem, Outcome.PAUSED
    if not policy.windows.is_open(now):
        return sem, Outcome.OUTSIDE_WINDOW
    if sem.available <= 0:
        return sem, Outcome.FULL
    if grantable(sem, now, policy) <= 0:
        return sem, Outcome.COOLDOWN
    if policy.gates:
        if gate is None:
            return sem, Outcome.GATE_PENDING
        if gate.state == "closed":
            return sem, Outcome.GATE_CLOSED
        if not gate.open:
            return sem, Outcome.GATE_UNREACHABLE
    return semaphore.lock(sem, id, now)


def unlock(
    sem: Semaphore, id: str, now: float, policy: GroupPolicy, *, by: str = "release"
) -> tuple[Semaphore, Outcome]:
    """UnlockIfHeld under the group's policy; ``by`` is ``release`` (the node) or
    ``operator`` (a force-unlock), recorded in the history."""
    sem = expire(sem, now, policy)
    h = sem.holder(id)
    if h is None:
        return sem, Outcome.NOT_HELD
    return _released(sem, h, now, policy, by), Outcome.RELEASED


def sweep(sem: Semaphore, now: float, policy: GroupPolicy) -> tuple[Semaphore, Outcome]:
    """The periodic pass: release expired holders, and record holders that turned stale
    (so each is reported once). CHANGED if it did anything."""
    after = expire(sem, now, policy)
    if policy.report_stale and policy.stale_after is not None:
        reported = set(after.policy.stale_reported)
        new = [h.grant_id for h in after.holders
               if is_stale(h, now, policy) and h.grant_id not in reported]
        if new:
            marks = tuple(sorted(reported | set(new)))
            after = replace(after, policy=replace(after.policy, stale_reported=marks))
    return after, (Outcome.UNCHANGED if after == sem else Outcome.CHANGED)


# What a decision did, for logs, metrics and notifications


@dataclass(slots=True)
class Event:
    """Something that happened to a holder: ``grant``, ``release``, ``expiry`` or ``stale``.

    ``by`` says who ended a release (``node`` or ``operator``). Shared by every observer of
    a decision, who must not change it; not ``frozen``, for the reason
    :class:`lockd.service.Decision` is not (a grant or release makes one)."""

    kind: str
    group: str
    id: str
    grant_id: int
    granted_at: float
    at: float
    by: str | None = None

    @property
    def held_seconds(self) -> float | None:
        return None if self.granted_at <= 0 else max(0.0, self.at - self.granted_at)

    def fields(self) -> dict[str, object]:
        """The event as JSON-ready fields (notification bodies and templates)."""
        held = self.held_seconds
        return {
            "event": self.kind,
            "group": self.group,
            "id": self.id,
            "grant_id": self.grant_id or None,
            "granted_at": self.granted_at or None,
            "at": self.at,
            "at_iso": format_instant(self.at, "UTC"),
            "held_seconds": None if held is None else round(held, 3),
            "by": self.by,
        }


def changes(
    group: str, before: Semaphore, after: Semaphore, now: float,
    released: str | None = None, by: str | None = None,
) -> tuple[Event, ...]:
    """The events between two states of one decision.

    A new holder is a grant; ``released`` (the id this decision released, if it did)
    leaving is a release ``by`` the node or an operator; any other holder leaving is an
    expiry (nothing else removes a slot); a grant id newly in ``stale_reported`` is a
    holder turning stale.
    """
    if before is after:
        return ()
    old = {(h.grant_id, h.id) for h in before.holders}
    new = {(h.grant_id, h.id): h for h in after.holders}
    events: list[Event] = []
    for h in before.holders:
        if (h.grant_id, h.id) in new:
            continue
        if h.id == released:
            events.append(Event("release", group, h.id, h.grant_id, h.granted_at, now, by))
        else:
            events.append(Event("expiry", group, h.id, h.grant_id, h.granted_at, now))
    for key, h in new.items():
        if key not in old:
            events.append(Event("grant", group, h.id, h.grant_id, h.granted_at, now))
    if not after.policy.stale_reported:  # the common case: nobody is stale
        return tuple(events)
    reported = set(before.policy.stale_reported)
    by_grant = {h.grant_id: h for h in after.holders}
    for grant_id in after.policy.stale_reported:
        if grant_id not in reported and grant_id in by_grant:
            h = by_grant[grant_id]
            events.append(Event("stale", group, h.id, h.grant_id, h.granted_at, now))
    return tuple(events)


# Refusals


#: The answer to "full", the same for every group and node, so built once (a storm answers
#: it thousands of times a second, issue #15). Shared: never raise it (raising would attach
#: the raiser's traceback to it) and never change it; answer it (lockd.frontend.refused).
FULL = LockdError(
    Kind.failed_lock_semaphore_full,
    "semaphore currently full, all slots are locked already",  # the protocol's own text
)


def refusal(
    outcome: Outcome, group: str, sem: Semaphore | None, now: float, policy: GroupPolicy,
    gate: GateVerdict | None = None,
) -> LockdError:
    """The ``{kind, value}`` a FleetLock client gets for a refused pre-reboot."""
    if outcome is Outcome.FULL:
        return FULL
    if outcome is Outcome.PAUSED:
        return LockdError(
            Kind.failed_lock_group_paused,
            f"group {group!r} is paused by an operator; no new reboots",
        )
    if outcome is Outcome.OUTSIDE_WINDOW:
        opens = policy.windows.next_open(now)
        if opens is None:
            when = "no window opens in the next 15 days"
        else:
            w = policy.windows.window_at(opens)
            zone_name = w.zone if w is not None else "UTC"
            when = f"the next window opens at {format_instant(opens, zone_name)}"
        return LockdError(
            Kind.failed_lock_outside_window,
            f"outside the reboot windows of group {group!r}; {when}",
        )
    if outcome is Outcome.COOLDOWN:
        ends = None if sem is None else cooldown_ends(sem, now, policy)
        until = "" if ends is None else f"; next grant possible at {format_instant(ends, 'UTC')}"
        return LockdError(
            Kind.failed_lock_cooldown,
            f"group {group!r} is cooling down after a release "
            f"(cooldown {format_duration(policy.cooldown)}){until}",
        )
    if outcome is Outcome.GATE_CLOSED and gate is not None:
        return LockdError(
            Kind.failed_lock_gate_closed, f"health gate {gate.gate!r} is closed: {gate.reason}"
        )
    name = gate.gate if gate is not None else "?"
    reason = gate.reason if gate is not None else "no answer"
    return LockdError(
        Kind.failed_lock_gate_unreachable,
        f"health gate {name!r} cannot be asked ({reason}); no grants until it answers",
    )
