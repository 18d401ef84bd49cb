"""LockService: group settings, one compare-and-set retry loop, and the decisions it logs.

Every change to a group goes through :meth:`LockService.update`: read the group's value and
version, apply a pure transition from :mod:`lockd.semaphore`, and write it back with the
store's compare-and-set. A lost race re-reads and retries (bounded, with jittered backoff).
Safety comes only from the store's compare-and-set; the per-group ``asyncio.Lock`` merely
keeps requests of one process from racing each other for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import Backend, BackendUnavailable, Version
from backends.layouts.base import LayoutError
from lockd import semaphore
from lockd.errors import Kind, LockdError
from lockd.semaphore import Outcome, Semaphore

log = logging.getLogger("lockd.service")

Transition = Callable[[Semaphore], tuple[Semaphore, Outcome]]


@dataclass(frozen=True)
class GroupSettings:
    """How many slots each group has, from configuration."""

    default_slots: int = 1
    slots: Mapping[str, int] = field(default_factory=dict)
    strict: bool = False

    def slots_for(self, group: str) -> int | None:
        """Configured slots for ``group``; None if the group is unknown under strict_groups."""
        if group in self.slots:
            return self.slots[group]
        return None if self.strict else self.default_slots


@dataclass(frozen=True)
class Decision:
    """What happened to one request; logged and counted by observers."""

    action: str
    group: str
    id: str | None
    outcome: Outcome | None
    error: Kind | None
    attempts: int
    seconds: float
    semaphore: Semaphore | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


Observer = Callable[[Decision], None]


class LockService:
    def __init__(
        self,
        backend: Backend,
        groups: GroupSettings,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 20,
        timeout: float = 10.0,
        backoff_base: float = 0.002,
        backoff_cap: float = 0.1,
        remember: int = 4096,
    ) -> None:
        self.backend = backend
        self.groups = groups
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.observers: list[Observer] = []
        # Per group: requests waiting for the next round trip, and the task running them.
        self._queues: dict[str, list[tuple[Transition, asyncio.Future[Any]]]] = {}
        self._drainers: dict[str, asyncio.Task[None]] = {}
        # The last value and version seen per key (most recent last), to skip a read
        # before a write; see _cas_loop.
        self._seen: OrderedDict[str, tuple[bytes, Version]] = OrderedDict()
        self.remember = remember

    def reconfigure(self, groups: GroupSettings) -> None:
        """Adopt new group settings (SIGHUP). See :meth:`apply_configuration`."""
        self.groups = groups

    async def apply_configuration(self) -> None:
        """Write the configured slots of every listed group whose stored value is older.

        Called at start-up and after a reload, so that a change of configuration reaches
        the store even if nobody uses the group before the next change. Groups that only
        take ``default_slots`` get it at their next access. A group that does not exist
        yet is not created.
        """
        if self.backend.layout.store_owns_slots:
            return
        for group in sorted(self.groups.slots):
            await self.update(group, _unchanged)

    # FleetLock operations

    async def pre_reboot(self, group: str, id: str) -> Outcome:
        now = self.clock()
        _, outcome = await self._decide(
            "pre-reboot", group, id, lambda s: semaphore.lock(s, id, now)
        )
        return outcome

    async def steady_state(self, group: str, id: str) -> Outcome:
        _, outcome = await self._decide(
            "steady-state", group, id, lambda s: semaphore.unlock(s, id)
        )
        return outcome

    # Operator actions

    async def force_unlock(self, group: str, id: str, *, actor: str = "admin") -> Outcome:
        _, outcome = await self._decide(
            "force-unlock", group, id, lambda s: semaphore.force_unlock(s, id), actor=actor
        )
        return outcome

    async def set_slots(self, group: str, slots: int, *, actor: str = "admin") -> Semaphore:
        sem, _ = await self._decide(
            "set-slots",
            group,
            None,
            lambda s: semaphore.set_slots(s, slots),
            actor=actor,
            slots=slots,
        )
        return sem

    async def set_paused(self, group: str, paused: bool, *, actor: str = "admin") -> Semaphore:
        action = "pause" if paused else "resume"
        sem, _ = await self._decide(
            action, group, None, lambda s: semaphore.set_paused(s, paused), actor=actor
        )
        return sem

    async def read(self, group: str) -> Semaphore | None:
        """The group's stored semaphore (config applied), or None if it was never used."""
        self._configured_slots(group)
        try:
            async with asyncio.timeout(self.timeout):
                raw, _ = await self.backend.get(self.backend.layout.key(group))
        except (BackendUnavailable, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        if raw is None:
            return None
        return self._current(group, raw)

    async def list_groups(self) -> list[str]:
        """Every group that has a stored semaphore."""
        layout = self.backend.layout
        try:
            async with asyncio.timeout(self.timeout):
                keys = await self.backend.scan(layout.group_prefix())
        except (BackendUnavailable, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        return sorted(g for g in map(layout.group_of, keys) if g is not None)

    async def ready(self) -> None:
        """Raise LockdError(backend_unavailable) unless the store answers."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.backend.ping()
        except (BackendUnavailable, TimeoutError) as exc:
            raise _unavailable(exc) from exc

    # The one retry loop

    async def update(self, group: str, transition: Transition) -> tuple[Semaphore, Outcome, int]:
        """Apply ``transition`` to ``group`` atomically; return (state, outcome, attempts).

        Requests for one group that arrive while its store round trip is in flight are
        coalesced: the next round trip applies all of them, in arrival order, to one read
        and commits them with one compare-and-set. Writes only when something changed.
        A request that waits longer than ``timeout`` gets 503 and is dropped from the queue
        if its turn has not come yet.
        """
        self._configured_slots(group)  # refuse unknown groups before queueing
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Semaphore, Outcome, int]] = loop.create_future()
        self._queues.setdefault(group, []).append((transition, future))
        if group not in self._drainers:
            self._drainers[group] = loop.create_task(self._drain(group))
        # A timer rather than wait_for: cheaper, and this runs for every request.
        timer = loop.call_later(self.timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def _drain(self, group: str) -> None:
        """Run round trips for ``group`` until its queue is empty."""
        try:
            while batch := [p for p in self._queues.pop(group, []) if not p[1].done()]:
                try:
                    async with asyncio.timeout(self.timeout):
                        results = await self._cas_loop(group, [t for t, _ in batch])
                except (BackendUnavailable, TimeoutError) as exc:
                    error: LockdError = _unavailable(exc)
                    results = None
                except LockdError as exc:
                    error, results = exc, None
                except Exception as exc:  # a bug must fail these requests, not strand them
                    log.exception("group %r: round trip failed", group)
                    error, results = exc, None  # type: ignore[assignment]
                for i, (_, future) in enumerate(batch):
                    if future.done():
                        continue
                    if results is None:
                        future.set_exception(error)
                    else:
                        future.set_result(results[i])
        finally:
            del self._drainers[group]

    async def _cas_loop(
        self, group: str, transitions: list[Transition]
    ) -> list[tuple[Semaphore, Outcome, int]]:
        """One round trip for a batch: decide on the group's value, then compare-and-set.

        The value this process last wrote or read is remembered, so a write can go
        straight to the compare-and-set: if someone else wrote since, it fails and
        returns the current value to decide again on. A decision that writes nothing is
        never made on a remembered value: it re-reads first.
        """
        slots = self._configured_slots(group)
        layout = self.backend.layout
        key = layout.key(group)
        remembered = self._seen.get(key)
        if remembered is None:
            raw, version = await self.backend.get(key)
            fresh = True
        else:
            (raw, version), fresh = remembered, False
        attempt = 1
        while True:
            if raw is None:
                current = stored = Semaphore.new(slots)
            else:
                stored = self._decode(group, raw)
                current = (
                    stored if layout.store_owns_slots else semaphore.apply_config(stored, slots)
                )
            results = []
            for transition in transitions:
                current, outcome = transition(current)
                results.append((current, outcome, attempt))
            if current == stored:
                if not fresh:
                    raw, version = await self.backend.get(key)
                    self._remember(key, raw, version)
                    fresh = True
                    continue
                # Nothing changed (or nothing to create): a read writes nothing.
                return results
            stored_it, raw, version = await self.backend.swap(
                key, layout.encode(current, raw), version
            )
            self._remember(key, raw, version)
            if stored_it:
                return results
            fresh = True
            if attempt == self.max_attempts:
                raise LockdError(
                    Kind.backend_contention,
                    f"group {group!r} changed under {self.max_attempts} attempts in a row; "
                    "try again",
                )
            # Lost the race to another writer: back off with full jitter, decide again.
            delay = min(self.backoff_cap, self.backoff_base * 2**attempt)
            await asyncio.sleep(random.uniform(0, delay))
            attempt += 1

    def _remember(self, key: str, raw: bytes | None, version: Version) -> None:
        if raw is None or version is None:
            self._seen.pop(key, None)
            return
        self._seen[key] = (raw, version)
        self._seen.move_to_end(key)
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)

    async def _decide(
        self, action: str, group: str, id: str | None, transition: Transition, **extra: Any
    ) -> tuple[Semaphore, Outcome]:
        started = time.perf_counter()
        attempts = 0
        try:
            sem, outcome, attempts = await self.update(group, transition)
        except LockdError as exc:
            self._emit(
                Decision(
                    action,
                    group,
                    id,
                    None,
                    exc.kind,
                    attempts,
                    time.perf_counter() - started,
                    None,
                    extra,
                )
            )
            raise
        self._emit(
            Decision(
                action,
                group,
                id,
                outcome,
                None,
                attempts,
                time.perf_counter() - started,
                sem,
                extra,
            )
        )
        return sem, outcome

    def _emit(self, decision: Decision) -> None:
        for observer in self.observers:
            try:
                observer(decision)
            except Exception:  # an observer must never turn a decision into an error
                log.exception("observer failed")

    def _configured_slots(self, group: str) -> int:
        slots = self.groups.slots_for(group)
        if slots is None:
            raise LockdError(Kind.unknown_group, f"group {group!r} is not configured")
        return slots

    def _current(self, group: str, raw: bytes) -> Semaphore:
        stored = self._decode(group, raw)
        if self.backend.layout.store_owns_slots:
            return stored
        slots = self.groups.slots_for(group)
        return stored if slots is None else semaphore.apply_config(stored, slots)

    def _decode(self, group: str, raw: bytes) -> Semaphore:
        try:
            return self.backend.layout.decode(raw)
        except LayoutError as exc:
            log.error("group %r: stored value cannot be decoded: %s", group, exc)
            raise LockdError(
                Kind.backend_invalid_data, f"the stored semaphore of group {group!r} is unreadable"
            ) from exc


def _expire(future: asyncio.Future[Any]) -> None:
    """The request waited ``timeout``: 503, and its turn is skipped if not yet taken."""
    if not future.done():
        future.set_exception(_unavailable(TimeoutError()))


def _unchanged(sem: Semaphore) -> tuple[Semaphore, Outcome]:
    return sem, Outcome.UNCHANGED


def _unavailable(exc: BaseException) -> LockdError:
    detail = str(exc) or "timed out"
    log.warning("backend unavailable: %s", detail)
    return LockdError(Kind.backend_unavailable, "the lock store cannot be reached; try again later")
