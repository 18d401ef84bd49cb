"""What a group's stored document remembers for its reboot policy, shared by every replica.

Plain data, kept in :attr:`lockd.semaphore.Semaphore.policy` and written by the native layout
only (the airlock and locksmith layouts have nowhere that survives airlock's or locksmith's own
writes, so there these stay empty; see docs/policy.md). The transitions that fill them live in
:mod:`lockd.policy`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reboot:
    """One finished reboot: a holder's grant and its end.

    ``ended`` says how: ``release`` (the node's steady-state), ``operator`` (a force-unlock)
    or ``expiry`` (``expire_after``)."""

    id: str
    grant_id: int
    granted_at: float
    released_at: float
    ended: str

    @property
    def seconds(self) -> float | None:
        """How long the slot was held; None when the grant time is unknown (0: granted by
        airlock or locksmith before lockd took over)."""
        if self.granted_at <= 0:
            return None
        return max(0.0, self.released_at - self.granted_at)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """``releases``: times of the latest releases still inside the cooldown (oldest first),
    one per slot at most; ``reboots``: the last ``history`` finished reboots (oldest first);
    ``stale_reported``: grant ids of current holders already reported stale, so that the
    report is made once, by the replica whose write recorded it."""

    releases: tuple[float, ...] = ()
    reboots: tuple[Reboot, ...] = ()
    stale_reported: tuple[int, ...] = ()

    @property
    def last_release_at(self) -> float | None:
        times = [*self.releases, *(r.released_at for r in self.reboots)]
        return max(times) if times else None
