"""LockService: group settings, one compare-and-set retry loop, and the decisions it logs.

Every change to a group goes through :meth:`LockService.update`: read the group's value and
version, apply a pure transition from :mod:`lockd.semaphore`, and write it back with the
store's compare-and-set. A lost race re-reads and retries (bounded, with jittered backoff).
Safety comes only from the store's compare-and-set; the per-group ``asyncio.Lock`` merely
keeps requests of one process from racing each other for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lockd import policy as policies
from lockd import semaphore
from lockd.backends import BackendUnavailable, ValueTooLarge, Version
from lockd.errors import Kind, LockdError
from lockd.gates import Gates
from lockd.groups import GroupSettings
from lockd.layouts import LayoutError
from lockd.policy import Event, GateVerdict, GroupPolicy
from lockd.semaphore import Outcome, Semaphore
from lockd.store import Store
from lockd.view import Token, View

log = logging.getLogger("lockd.service")

Transition = Callable[[Semaphore], tuple[Semaphore, Outcome]]


@dataclass(slots=True)
class Decision:
    """What happened to one request; logged and counted by observers, who must not
    change it (it is shared by all of them). Not ``frozen``: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, 1.1 us against 0.25 us
    for this one on every decision (issue #15)."""

    action: str
    group: str
    id: str | None
    outcome: Outcome | None
    error: Kind | None
    attempts: int
    seconds: float
    semaphore: Semaphore | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: What happened to holders (grants, releases, expiries, stale reports), once the
    #: decision is committed; see lockd.policy.changes.
    events: tuple[Event, ...] = ()


Observer = Callable[[Decision], None]
#: One request's answer: the state after its transition, its outcome, the attempt number,
#: and the state its transition started from.
Result = tuple[Semaphore, Outcome, int, Semaphore]


@dataclass(slots=True)
class Answer:
    """A pre-reboot's outcome with what explains a refusal: the state it was decided on,
    the time, the group's policy and the health gates' verdict (if they were asked)."""

    outcome: Outcome
    state: Semaphore
    now: float
    policy: GroupPolicy
    gate: GateVerdict | None = None


@dataclass(eq=False, slots=True)
class Pending:
    """A request waiting for its group's next round trip."""

    transition: Transition
    future: asyncio.Future[Result]


# The service's rules, each named where it acts and tested alone (tests/test_service.py).


def still_waiting(batch: list[Pending]) -> list[Pending]:
    """The requests of a batch that are still waiting for an answer.

    A request already answered (it timed out with a 503, or its client hung up) is never
    applied afterwards: its client will ask again, and a late release could free a slot
    the same node took again since. Checked before every attempt, not only once per batch.
    """
    return [p for p in batch if not p.future.done()]


def apply_in_order(
    current: Semaphore, batch: list[Pending], attempt: int
) -> tuple[Semaphore, list[Result | LockdError]]:
    """Coalescing: apply every request of a batch, in arrival order, to one state.

    A transition that fails fails only its own request, which changes nothing; the others
    go on from the state before it.
    """
    results: list[Result | LockdError] = []
    for pending in batch:
        try:
            after, outcome = pending.transition(current)
        except Exception as exc:  # a bug in one decision must not fail its neighbours
            log.exception("a transition failed")
            results.append(
                exc if isinstance(exc, LockdError)
                else LockdError(Kind.internal_error, "internal error")
            )
            continue
        results.append((after, outcome, attempt, current))
        current = after
    return current, results


def must_read_first(writes: bool, fresh: bool) -> bool:
    """Whether a decision made on a remembered value must be made again on a fresh read.

    A decision that writes is checked by the store: the compare-and-set fails if the value
    moved on, and the loop decides again. A decision that writes nothing (a re-lock, "full",
    "not held") is checked by nobody, so it is only ever given from a value just read: a
    stale "you still hold it" would be a wrong 200.
    """
    return not writes and not fresh


def decision_stands(decided_on: bytes | None, read: bytes | None, batch: list[Pending]) -> bool:
    """Whether a batch decided on a remembered value may be answered as decided once a
    fresh read (:func:`must_read_first`) returns ``read``: only if the read found that
    same value and every request of the batch still waits (one answered meanwhile would
    change what the others after it were decided on)."""
    return (
        read is not None
        and (read is decided_on or read == decided_on)
        and not any(p.future.done() for p in batch)
    )


def view_may_refuse(outcome: Outcome) -> bool:
    """Whether a decision made on the view (lockd.view) may be the answer: only a refusal.
    Anything that may answer 200 decides on the store's current value (a stale "you still
    hold it" would let a force-unlocked node reboot without a slot), and so does
    GATE_PENDING, which would go on to a grant."""
    # "full" first, by identity: Outcome.ok hashes an Enum in Python, on every refusal.
    return outcome is Outcome.FULL or (not outcome.ok and outcome is not Outcome.GATE_PENDING)


def verdict_keeps(outcome: Outcome, policy: GroupPolicy) -> bool:
    """Whether a refusal decided on a view entry is the answer of every other non-holder
    on that same entry for as long as it is trusted, whatever the clock says: "full" and
    "paused" (:func:`lockd.policy.lock` decides them from the state alone) under a policy
    whose answer cannot move with time. Expiry can free a slot at any moment, and a reboot
    window can close on "full" (which then becomes "outside the window"); a cooldown or a
    gate is never reached before "full" or "paused"."""
    return (
        (outcome is Outcome.FULL or outcome is Outcome.PAUSED)
        and policy.expire_after is None
        and not policy.windows
    )


def settle(batch: list[Pending], results: list[Result | LockdError]) -> None:
    for pending, result in zip(batch, results, strict=True):
        if pending.future.done():
            continue
        if isinstance(result, LockdError):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)


def fail(batch: list[Pending], error: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)


class LockService:
    def __init__(
        self,
        store: Store,
        groups: GroupSettings,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 20,
        timeout: float = 10.0,
        backoff_base: float = 0.002,
        backoff_cap: float = 0.1,
        remember: int = 4096,
        gates: Gates | None = None,
        touch_every: float | None = None,
        view: View | None = None,
    ) -> None:
        self.store = store
        self.backend = store.backend
        self.layout = store.layout
        self.groups = groups
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.observers: list[Observer] = []
        # Per group: requests waiting for the next round trip, and the task running them.
        self._queues: dict[str, list[Pending]] = {}
        # None: the group's round trip is run by the request leading it (see update).
        self._drainers: dict[str, asyncio.Task[None] | None] = {}
        # The last value and version seen per key (most recent last), to skip a read
        # before a write (see _round_trip and must_read_first), with the value decoded
        # once it has been (see _stored): a group's document is decoded once per change,
        # not once per request.
        self._seen: OrderedDict[str, tuple[bytes, Version, Semaphore | None]] = OrderedDict()
        self.remember = remember
        # Per group: the configured slots this process has seen reach the store. See
        # configured_state: configuration is applied when it changes, not per decision.
        # Bounded like _seen (most recently used last): a group forgotten here has its
        # configuration applied again at its next use, which writes only if it differs.
        self._applied: OrderedDict[str, int] = OrderedDict()
        #: group -> (slots configured here, slots another replica's configuration wrote),
        #: for groups where the two disagree; shown by metrics, the admin API and the CLI.
        self.config_mismatches: dict[str, tuple[int, int | None]] = {}
        #: The health gates this service asks before a grant (lockd.gates).
        self.gates = gates if gates is not None else Gates()
        #: Seconds between two sweeps (lockd.policyrun starts them).
        self.sweep_interval = 30.0
        self._policies: dict[str, GroupPolicy] = {}
        #: Keep each group's idle clock (:func:`lockd.semaphore.touch`), refreshed by a
        #: decision that writes nothing only when this many seconds old. Public mode's
        #: tenant service only (its GC reads it); such a service has no sweeps and no
        #: configured groups, so every decision here is a client's request.
        self.touch_every = touch_every
        #: The groups as the store's change feed says they are, for refusals without a
        #: round trip (lockd.view); None: every decision reads the store.
        self.view = view

    def reconfigure(self, groups: GroupSettings) -> None:
        """Adopt new group settings (SIGHUP). See :meth:`apply_configuration`."""
        self.groups = groups
        self._policies.clear()

    def policy_for(self, group: str) -> GroupPolicy:
        """The group's reboot policy as this store can keep it: on a layout that cannot
        store policy state, what needs it is off (configuration refuses asking for it)."""
        found = self._policies.get(group)
        if found is None:
            found = self._storable(self.groups.policy_for(group))
            if len(self._policies) < self.remember:
                self._policies[group] = found
        return found

    def _storable(self, policy: GroupPolicy) -> GroupPolicy:
        return policy if self.layout.stores_policy_state else policy.stateless()

    async def apply_configuration(self) -> None:
        """Write the configured slots of every listed group whose stored value is older.

        Called at start-up and after a reload, so that a change of configuration reaches
        the store even if nobody uses the group before the next change. Groups that only
        take ``default_slots`` get it at their next access. A group that does not exist
        yet is not created.
        """
        if self.layout.store_owns_slots:
            return
        for group in sorted(self.groups.slots):
            await self.update(group, _unchanged)

    # FleetLock operations

    async def pre_reboot(self, group: str, id: str) -> Outcome:
        return (await self.try_lock(group, id)).outcome

    async def try_lock(self, group: str, id: str) -> Answer:
        """RecursiveLock under the group's policy (:func:`lockd.policy.lock`).

        The health gates are I/O, so they are asked here, outside the compare-and-set
        loop, and only when the model says the request would otherwise be granted
        (GATE_PENDING); the model then decides again with their verdict.
        """
        slots = self._configured_slots(group)
        policy = self.policy_for(group)
        now = self.clock()
        verdict = None
        if self.view is not None:
            started = time.perf_counter()
            decided = self._decide_on_view(group, id, slots, now, policy, None)
            if decided is not None and decided[1] is Outcome.GATE_PENDING:
                # The view says it would grant: the gates decide (their answer is cached),
                # and a closed gate is a refusal the view may give too.
                verdict = await self.gates.check(policy.gates, group, id)
                now = self.clock()
                decided = self._decide_on_view(group, id, slots, now, policy, verdict)
            if decided is not None and view_may_refuse(decided[1]):
                self.view.hits += 1
                sem, outcome = decided
                # attempts=0: no store attempt, the view answered.
                self._emit(Decision("pre-reboot", group, id, outcome, None, 0,
                                    time.perf_counter() - started, sem))
                return Answer(outcome, sem, now, policy, verdict)
            self.view.misses += 1
        if verdict is not None:  # asked already: the store's decision is final
            sem, outcome = await self._decide(
                "pre-reboot", group, id,
                lambda s: policies.lock(s, id, now, policy, verdict), now=now,
            )
            return Answer(outcome, sem, now, policy, verdict)
        sem, outcome = await self._decide(
            "pre-reboot", group, id, lambda s: policies.lock(s, id, now, policy), now=now
        )
        if outcome is Outcome.GATE_PENDING:
            verdict = await self.gates.check(policy.gates, group, id)
            now = self.clock()
            sem, outcome = await self._decide(
                "pre-reboot", group, id,
                lambda s: policies.lock(s, id, now, policy, verdict), now=now,
            )
        return Answer(outcome, sem, now, policy, verdict)

    def _decide_on_view(
        self, group: str, id: str, slots: int, now: float, policy: GroupPolicy,
        verdict: GateVerdict | None,
    ) -> tuple[Semaphore, Outcome] | None:
        """A pre-reboot decided on the group's view entry, if one is trusted (lockd.view)
        and the decision writes nothing; else None. Whether it may be the answer is
        :func:`view_may_refuse`'s to say. Before the group's queue: it waits for nothing.

        A refusal that :func:`verdict_keeps` is kept with the entry and given again to
        every other non-holder without running the policy (a storm's thousands of "full"
        on one unchanged value, issue #15). The entry is replaced whenever its key
        changes, and the verdict is kept only for the very policy object it came from."""
        assert self.view is not None
        key = self.layout.key(group)
        entry = self.view.lookup(key)
        if entry is None:
            return None
        stored = entry.decoded
        if stored is None:
            try:
                stored = Semaphore.new(slots) if entry.raw is None else \
                    self._stored(group, key, entry.raw)
            except LockdError:
                return None  # the store path says so, with its own error
            entry.decoded = stored
        # "is": configuration that changes nothing returns the very state it was given,
        # and a decision on a changed state writes (the store decides it).
        if self.configured_state(group, stored, slots) is not stored:
            return None
        kept = entry.verdict
        if kept is not None and kept[0] is policy and stored.holder(id) is None:
            return stored, kept[1]
        after, outcome = policies.lock(stored, id, now, policy, verdict)
        # "is": a transition that changes nothing returns the very state it was given.
        if after is not stored:
            return None
        if verdict_keeps(outcome, policy):
            entry.verdict = (policy, outcome)
        return after, outcome

    def refusal(self, group: str, answer: Answer) -> LockdError:
        """The ``{kind, value}`` for a refused pre-reboot."""
        return policies.refusal(
            answer.outcome, group, answer.state, answer.now, answer.policy, answer.gate
        )

    async def steady_state(self, group: str, id: str) -> Outcome:
        policy = self.policy_for(group)
        now = self.clock()
        _, outcome = await self._decide(
            "steady-state", group, id, lambda s: policies.unlock(s, id, now, policy), now=now
        )
        return outcome

    async def sweep(self) -> None:
        """One pass of the periodic sweep: every group whose policy expires or reports
        stale holders gets :func:`lockd.policy.sweep` through the compare-and-set loop, so
        on several replicas exactly one writes (and reports) each change."""
        names = set(self.groups.slots)
        if self._storable(self.groups.policy).sweeps:  # what unlisted groups take
            names.update(await self.list_groups())
        for group in sorted(names):
            policy = self.policy_for(group)
            if not policy.sweeps:
                continue
            now = self.clock()
            try:
                await self._decide(
                    "sweep", group, None,
                    lambda s, now=now, policy=policy: policies.sweep(s, now, policy), now=now,
                )
            except LockdError as exc:
                if exc.kind is not Kind.unknown_group:
                    log.warning("sweep of group %r failed: %s", group, exc.value)

    async def run_sweeps(self) -> None:
        """Sweep every :attr:`sweep_interval` seconds until cancelled."""
        await every(lambda: self.sweep_interval, self.sweep, "sweep")

    # Operator actions

    async def force_unlock(self, group: str, id: str, *, actor: str = "admin") -> Outcome:
        policy = self.policy_for(group)
        now = self.clock()
        _, outcome = await self._decide(
            "force-unlock", group, id,
            lambda s: policies.unlock(s, id, now, policy, by="operator"), now=now, actor=actor,
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
                raw, _ = await self.backend.get(self.layout.key(group))
        except (BackendUnavailable, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        if raw is None:
            return None
        return self._current(group, raw)

    async def list_groups(self) -> list[str]:
        """Every group that has a stored semaphore."""
        layout = self.layout
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

    async def update(self, group: str, transition: Transition) -> Result:
        """Apply ``transition`` to ``group`` atomically; return (state, outcome, attempts).

        Requests for one group that arrive while its store round trip is in flight wait
        for the next one, which applies all of them (:func:`apply_in_order`) and commits
        them with one compare-and-set. A request that waits longer than ``timeout`` gets
        503 and is not applied afterwards (:func:`still_waiting`).
        """
        self._configured_slots(group)  # refuse unknown groups before queueing
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        pending = Pending(transition, future)
        if group in self._drainers:  # a round trip is under way: join the next batch
            self._queues.setdefault(group, []).append(pending)
            return await self._wait(loop, future)
        # An idle group: this request leads its own round trip in its own task, rather
        # than waking a drain task and being woken by it (with a timer of its own), which
        # cost a grant+release more than its compare-and-set (issue #15). Requests that
        # arrive in this same loop iteration still share one batch (they are handed to a
        # drain task); those that arrive during the round trip go to one afterwards.
        self._queues[group] = [pending]
        self._drainers[group] = None
        leading = True
        try:
            await asyncio.sleep(0)  # let this iteration's other requests join the batch
            batch = self._queues.pop(group)
            if len(batch) > 1:
                self._queues[group] = batch
                self._drainers[group] = loop.create_task(self._drain(group))
                leading = False
                return await self._wait(loop, future)
            await self._run(group, batch)
        finally:
            if leading:  # on every way out, cancellation included: strand nobody
                if not future.done():
                    future.cancel()
                if self._queues.get(group):
                    self._drainers[group] = loop.create_task(self._drain(group))
                else:
                    self._queues.pop(group, None)
                    del self._drainers[group]
        return future.result()

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Result]
    ) -> Result:
        """A queued request's answer, or a 503 after ``timeout`` (then never applied)."""
        # A timer rather than wait_for: cheaper, and this runs for every queued request.
        timer = loop.call_later(self.timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def _drain(self, group: str) -> None:
        """Run round trips for ``group`` until its queue is empty."""
        try:
            while batch := still_waiting(self._queues.pop(group, [])):
                await self._run(group, batch)
        finally:
            del self._drainers[group]

    async def _run(self, group: str, batch: list[Pending]) -> None:
        """One batch's round trip; every way it can fail answers the batch's requests."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._round_trip(group, batch)
        except (BackendUnavailable, TimeoutError) as exc:
            fail(batch, _unavailable(exc))
        except ValueTooLarge as exc:
            log.error("group %r: too large for the store: %s", group, exc)
            fail(batch, LockdError(
                Kind.backend_group_too_large,
                f"group {group!r} has grown too large for the lock store; no new "
                "holders until some release",
            ))
        except LockdError as exc:
            fail(batch, exc)
        except Exception:  # a bug must fail these requests, not strand them
            log.exception("group %r: round trip failed", group)
            fail(batch, LockdError(Kind.internal_error, "internal error"))

    async def _round_trip(self, group: str, batch: list[Pending]) -> None:
        """Decide a batch on the group's value, then compare-and-set; answer each request.

        The value this process last wrote or read is remembered, so a write can go
        straight to the compare-and-set: if someone else wrote since, it fails and
        answers the current value to decide again on (:func:`must_read_first` says when
        a remembered value is not enough).
        """
        slots = self._configured_slots(group)
        layout = self.layout
        key = layout.key(group)
        remembered = self._seen.get(key)
        view = self.view
        if remembered is None:
            token = view.token() if view is not None else None
            raw, version = await self.backend.get(key)
            self._fill(key, raw, version, token)
            fresh = True
        else:
            (raw, version, _), fresh = remembered, False
        attempt = 1
        while batch := still_waiting(batch):
            if raw is None:
                current = stored = Semaphore.new(slots)
            else:
                stored = self._stored(group, key, raw)
                current = self.configured_state(group, stored, slots)
            current, results = apply_in_order(current, batch, attempt)
            writes = current != stored
            if self.touch_every is not None:
                current = semaphore.touch(current, self.clock(), self.touch_every,
                                          writes=writes, exists=raw is not None)
                writes = current != stored
            if must_read_first(writes, fresh):
                decided_on = raw
                token = view.token() if view is not None else None
                raw, version = await self.backend.get(key)
                self._remember(key, raw, version)
                self._fill(key, raw, version, token)
                fresh = True
                if decision_stands(decided_on, raw, batch) and self.touch_every is None:
                    # The fresh read found the very value decided on: deciding again
                    # would apply the same pure transitions to the same state (a holder's
                    # re-lock, issue #15). Not with touch_every: its clock moved on.
                    self._applied_to_store(group, current, slots)
                    settle(batch, results)
                    return
                continue
            if not writes:
                self._applied_to_store(group, current, slots)
                settle(batch, results)
                return
            token = view.token() if view is not None else None
            encoded = layout.encode(current, raw)
            result = await self.backend.compare_and_set(key, encoded, version)
            # What was written is what was decided on, where the layout keeps all of it.
            self._remember(key, result.value, result.version,
                           current if layout.lossless and result.value is encoded else None)
            if result.stored and result.version is None:  # written, version not known
                self._fill(key, None, None, None)
            else:
                self._fill(key, result.value, result.version, token)
            if result.stored:
                self._applied_to_store(group, current, slots)
                settle(batch, results)
                return
            raw, version, fresh = result.value, result.version, True
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

    def _fill(self, key: str, raw: bytes | None, version: Version, token: Token | None) -> None:
        """Tell the view what a read or write that started at ``token`` found (None:
        nothing it may keep)."""
        if self.view is not None:
            if token is None:
                self.view.forget(key)
            else:
                self.view.fill(key, raw, version, token)

    def _remember(self, key: str, raw: bytes | None, version: Version,
                  decoded: Semaphore | None = None) -> None:
        if raw is None or version is None:
            self._seen.pop(key, None)
            return
        if decoded is None:  # a read of the value remembered already: keep its decoding
            seen = self._seen.get(key)
            if seen is not None and seen[0] == raw:
                decoded = seen[2]
        self._seen[key] = (raw, version, decoded)
        self._seen.move_to_end(key)
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)

    async def _decide(
        self, action: str, group: str, id: str | None, transition: Transition,
        now: float | None = None, **extra: Any,
    ) -> tuple[Semaphore, Outcome]:
        started = time.perf_counter()
        attempts = 0
        try:
            sem, outcome, attempts, before = await self.update(group, transition)
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
        events: tuple[Event, ...] = ()
        if now is not None:
            released = id if outcome is Outcome.RELEASED else None
            by = "operator" if action == "force-unlock" else "node"
            events = policies.changes(group, before, sem, now, released, by)
        if not events and (
            outcome is Outcome.GATE_PENDING
            or (action == "sweep" and outcome is Outcome.UNCHANGED)
        ):
            # Nothing happened: the first half of a decision that waits for the gates (the
            # second half is the one reported), or a sweep with nothing to do.
            return sem, outcome
        _log_events(events)
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
                events,
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

    def configured_state(self, group: str, stored: Semaphore, slots: int) -> Semaphore:
        """The state to decide on: ``stored`` with this process's configuration applied if
        it has not reached the store yet (start-up, a reload that changed it, first use).

        Once this process has applied its configured slots, it does not apply them again:
        another replica with a different configuration (a rolling change, a refused
        reload) would otherwise rewrite the group on every request, each undoing the
        other and any run-time set-max. The disagreement is reported instead.
        """
        if self.layout.store_owns_slots:
            return stored
        if stored.config_slots is None:
            # Another program wrote it last (airlock drops lockd's fields): apply the
            # configuration where it differs, and write nothing where it agrees.
            return stored if stored.slots == slots else semaphore.apply_config(stored, slots)
        if self._applied.get(group) != slots:
            return semaphore.apply_config(stored, slots)
        if stored.config_slots != slots:
            self._mismatch(group, slots, stored.config_slots)
        return stored

    def _applied_to_store(self, group: str, state: Semaphore, slots: int) -> None:
        if not self.layout.store_owns_slots and state.config_slots == slots:
            self._applied[group] = slots
            self._applied.move_to_end(group)
            if len(self._applied) > self.remember:
                self._applied.popitem(last=False)
            self.config_mismatches.pop(group, None)

    def _mismatch(self, group: str, ours: int, theirs: int | None) -> None:
        if self.config_mismatches.get(group) == (ours, theirs):
            return
        if len(self.config_mismatches) >= self.remember:  # bounded: forget the oldest
            del self.config_mismatches[next(iter(self.config_mismatches))]
        self.config_mismatches[group] = (ours, theirs)
        log.warning(
            "group %r: configured with %d slots here, but another replica's configuration "
            "(%s slots) reached the store since; not overwriting it. Make the replicas' "
            "configuration agree (then reload or restart one)",
            group, ours, theirs,
        )

    def _stored(self, group: str, key: str, raw: bytes) -> Semaphore:
        """``raw`` decoded, from what this process remembers when it is the value it last
        read or wrote (decoding a document with its history is the dearest part of a
        grant or release). Semaphores are immutable, so one decoding serves every reader."""
        seen = self._seen.get(key)
        if seen is not None and (seen[0] is raw or seen[0] == raw):
            if seen[2] is None:
                self._seen[key] = (seen[0], seen[1], decoded := self._decode(group, raw))
                return decoded
            return seen[2]
        return self._decode(group, raw)

    def _current(self, group: str, raw: bytes) -> Semaphore:
        stored = self._decode(group, raw)
        slots = self.groups.slots_for(group)
        return stored if slots is None else self.configured_state(group, stored, slots)

    def _decode(self, group: str, raw: bytes) -> Semaphore:
        try:
            return self.layout.decode(raw)
        except LayoutError as exc:
            log.error("group %r: stored value cannot be decoded: %s", group, exc)
            raise LockdError(
                Kind.backend_invalid_data, f"the stored semaphore of group {group!r} is unreadable"
            ) from exc


async def every(
    interval: Callable[[], float], step: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run ``step`` after each ``interval()`` seconds until cancelled. A failed pass is
    logged and the next one goes on: a periodic task must outlive a bug in one pass."""
    while True:
        await asyncio.sleep(interval())
        try:
            await step()
        except LockdError as exc:
            log.warning("%s failed: %s", what, exc.value)
        except Exception:
            log.exception("%s failed", what)


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel a background task (a periodic loop, a feed) and wait until it has ended.

    Cancelled again every :data:`RECANCEL_S` until it ends: on Python 3.11,
    ``asyncio.wait_for`` (which redis-py awaits around every socket write) swallows a
    cancellation that arrives as the future it waits for completes (CPython gh-86296,
    fixed in 3.12), and the task then goes on as if never cancelled. Found as a shutdown
    that never finished: the GC loop kept collecting after its cancel."""
    while not task.done():
        task.cancel()
        # asyncio.wait neither raises the task's CancelledError nor absorbs ours.
        await asyncio.wait({task}, timeout=RECANCEL_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task


#: How long :func:`stop` waits for a cancelled task before cancelling it again.
RECANCEL_S = 0.5


def _log_events(events: tuple[Event, ...]) -> None:
    """Expiries and stale holders are worth a line of their own (grants and releases have
    their decision line)."""
    for e in events:
        if e.kind not in ("expiry", "stale"):
            continue
        held = e.held_seconds or 0.0
        what = "released expired holder" if e.kind == "expiry" else "holder is stale"
        log.warning(
            "group %r: %s %r (held %.0f s)", e.group, what, e.id, held,
            extra={"event": "holder_expired" if e.kind == "expiry" else "holder_stale",
                   "group": e.group, "id": e.id, "grant_id": e.grant_id,
                   "held_s": round(held, 3)},
        )


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
