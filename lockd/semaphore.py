"""The reboot semaphore: plain data and pure transitions.

Every backend stores a :class:`Semaphore` for each group (through a layout) and every lock
decision is made here, once. Nothing in this module does I/O or reads a clock: the time of a
grant is a parameter.

A FleetLock semaphore is a counting semaphore with owned, recursive locks: ``lock`` by a
holder succeeds again without taking a second slot, ``unlock`` by a non-holder succeeds
without changing anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from lockd.policystate import PolicyState


@dataclass(frozen=True, slots=True)
class Holder:
    """A node holding a slot: its id, when it was granted (epoch seconds) and the grant id."""

    id: str
    granted_at: float
    grant_id: int


@dataclass(frozen=True, slots=True)
class Semaphore:
    """One group's semaphore.

    ``slots`` is the live number of slots. ``config_slots`` is the configured value that was
    last applied, so that a change of configuration is applied once (airlock#81) while a
    run-time ``set-max`` lasts until the configuration of that group changes again.
    ``free_counter`` is locksmith's stored count of free slots, kept exactly as locksmith
    would keep it; it is ``None`` in lockd's own layouts. ``policy`` is what the reboot
    policy shares between replicas (:mod:`lockd.policy`); only the native layout stores it.
    ``touched`` is the group's idle clock (epoch seconds), kept only where a service is
    given one (public mode's tenant groups, :func:`touch`); ``None`` elsewhere.
    """

    slots: int
    holders: tuple[Holder, ...] = ()
    next_grant_id: int = 1
    config_slots: int | None = None
    paused: bool = False
    free_counter: int | None = None
    policy: PolicyState = field(default_factory=PolicyState)
    touched: float | None = None

    @classmethod
    def new(cls, slots: int) -> Semaphore:
        return cls(slots=slots, config_slots=slots)

    def holder(self, id: str) -> Holder | None:
        for h in self.holders:
            if h.id == id:
                return h
        return None

    @property
    def available(self) -> int:
        """Free slots; never negative. A foreign counter can only make it smaller."""
        free = self.slots - len(self.holders)
        if self.free_counter is not None:
            free = min(free, self.free_counter)
        return max(free, 0)


class Outcome(enum.Enum):
    GRANTED = "granted"
    ALREADY_HELD = "already_held"
    FULL = "full"
    PAUSED = "paused"
    RELEASED = "released"
    NOT_HELD = "not_held"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    # Refusals of the reboot policy (lockd.policy); GATE_PENDING never reaches a client:
    # the service asks the group's health gates and decides again.
    OUTSIDE_WINDOW = "outside_window"
    COOLDOWN = "cooldown"
    GATE_CLOSED = "gate_closed"
    GATE_UNREACHABLE = "gate_unreachable"
    GATE_PENDING = "gate_pending"

    @property
    def ok(self) -> bool:
        """Whether a FleetLock client gets a 200 for this outcome."""
        return self not in _REFUSED


_REFUSED = frozenset({
    Outcome.FULL, Outcome.PAUSED, Outcome.OUTSIDE_WINDOW, Outcome.COOLDOWN,
    Outcome.GATE_CLOSED, Outcome.GATE_UNREACHABLE, Outcome.GATE_PENDING,
})


def lock(sem: Semaphore, id: str, now: float) -> tuple[Semaphore, Outcome]:
    """RecursiveLock: take a slot for ``id`` unless it already holds one."""
    if sem.holder(id) is not None:
        return sem, Outcome.ALREADY_HELD
    if sem.paused:
        return sem, Outcome.PAUSED
    if sem.available <= 0:
        return sem, Outcome.FULL
    holder = Holder(id, now, sem.next_grant_id)
    counter = None if sem.free_counter is None else sem.free_counter - 1
    return (
        with_holders(sem, (*sem.holders, holder), sem.next_grant_id + 1, counter),
        Outcome.GRANTED,
    )


def with_holders(
    sem: Semaphore, holders: tuple[Holder, ...], next_grant_id: int, free_counter: int | None,
    policy: PolicyState | None = None,
) -> Semaphore:
    """``sem`` with new holders (and policy state): what every grant and release builds.

    Hand-written rather than ``dataclasses.replace``: 0.9 us against 2.0 us a call here,
    and a release made two of them (issue #15); every field is passed, and
    tests/test_semaphore.py fails if one is added that this does not pass on."""
    return Semaphore(
        sem.slots, holders, next_grant_id, sem.config_slots, sem.paused, free_counter,
        sem.policy if policy is None else policy, sem.touched,
    )


def unlock(sem: Semaphore, id: str) -> tuple[Semaphore, Outcome]:
    """UnlockIfHeld: release ``id``'s slot; succeed without change if it holds none."""
    if sem.holder(id) is None:
        return sem, Outcome.NOT_HELD
    return released(sem, id), Outcome.RELEASED


def released(sem: Semaphore, id: str, policy: PolicyState | None = None) -> Semaphore:
    """``sem`` without ``id``'s slot (and with ``policy`` as its policy state, if given)."""
    counter = None if sem.free_counter is None else sem.free_counter + 1
    holders = tuple([h for h in sem.holders if h.id != id])
    return with_holders(sem, holders, sem.next_grant_id, counter, policy)


def set_slots(sem: Semaphore, slots: int) -> tuple[Semaphore, Outcome]:
    """Change the number of slots at run time; existing holders keep their slots.

    Lowering slots below the number of holders refuses new grants until enough holders
    release; nobody is evicted. A foreign free counter moves by the same difference, as
    ``locksmithctl set-max`` moves it.
    """
    if slots < 1:
        raise ValueError("slots must be >= 1")
    if slots == sem.slots:
        return sem, Outcome.UNCHANGED
    counter = None if sem.free_counter is None else sem.free_counter + (slots - sem.slots)
    return replace(sem, slots=slots, free_counter=counter), Outcome.CHANGED


def apply_config(sem: Semaphore, configured: int) -> Semaphore:
    """Apply the configured slots once per change of configuration.

    Nothing changes while the configured value is the one last applied, so a ``set-max``
    made at run time survives restarts until the configuration of the group changes.
    """
    if sem.config_slots == configured:
        return sem
    new, _ = set_slots(sem, configured)
    return replace(new, config_slots=configured)


def set_paused(sem: Semaphore, paused: bool) -> tuple[Semaphore, Outcome]:
    """Pause (refuse new grants; holders may still re-lock and release) or resume."""
    if sem.paused == paused:
        return sem, Outcome.UNCHANGED
    return replace(sem, paused=paused), Outcome.CHANGED


def touch(sem: Semaphore, now: float, every: float, *, writes: bool, exists: bool) -> Semaphore:
    """The idle clock, written coarsely: ``touched`` is set to ``now`` in every write a
    decision makes anyway, and otherwise only in a stored group without holders whose clock
    is ``every`` seconds old or more (or missing). So a poll writes at most once per
    ``every``, a refusal (which means holders) never, and nothing absent is created.

    A group with holders needs no fresh clock: it is never idle, and the release of its
    last holder is a write, which sets it.
    """
    if writes:
        return replace(sem, touched=now)
    if exists and not sem.holders and (sem.touched is None or now - sem.touched >= every):
        return replace(sem, touched=now)
    return sem


def force_unlock(sem: Semaphore, id: str) -> tuple[Semaphore, Outcome]:
    """An operator frees a dead node's slot: the same transition as a release."""
    return unlock(sem, id)
