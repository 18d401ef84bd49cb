"""A linearizability checker for FleetLock semaphores, judged from what clients saw.

The model
---------
Each group is an independent object: a counting semaphore of ``slots`` slots whose slots are
*owned* by node ids and taken *recursively*. Its operations, as a sequential specification:

- ``lock(id)`` (``POST /v1/pre-reboot``): if ``id`` holds a slot, succeed and change nothing;
  else if a slot is free, succeed and ``id`` now holds one; else refuse ("full").
- ``unlock(id)`` (``POST /v1/steady-state``) and ``force_unlock(id)`` (the operator's
  release): always succeed; ``id`` holds nothing afterwards.
- ``set_slots(n)`` (operator): always succeeds; the group has ``n`` slots from then on.
  Holders beyond ``n`` keep their slots; nobody new is granted until fewer than ``n`` hold.
- ``read`` (operator, e.g. the admin API's holder list or a final look at the store):
  succeeds and observes the exact set of holders.

A history is what the clients recorded: per operation its process, group, kind, node id,
invocation time, completion time and result. The history is *linearizable* when every
operation can be given one instant inside its interval such that replaying the operations
in that order through the specification gives every recorded result. Groups share nothing,
so each group is checked on its own (P-compositionality): the cost is a sum over groups,
not a product, and a verdict names the group. Not modelled: pauses, reboot windows and
rate limits (a refusal for those is just "refused"), and any expiry of holders.

What the results mean
---------------------
- ``ok`` (a 200): the operation took effect inside its interval, with that result.
- ``refused`` (a definite "no": 4xx such as 423 full or paused, 429, 400): the state did not
  change. By default a refused operation is simply dropped: see below.
- ``unknown`` (a timeout, a reset connection, a 503, no answer at all): the operation may
  have taken effect at any instant after its invocation, *including after the client gave up*
  (a write logged by a store member may commit later), or never. Its completion time is
  treated as +infinity and it is allowed to not happen at all. An unknown operation always
  has *some* legal outcome (a lock on a full semaphore is a refused no-op), so "never" is
  the same as "at the very end", and the search only has to place acknowledged operations.
  ``unknown_horizon=H`` narrows this to "within H seconds of its invocation, or never",
  for harnesses that know how long a lost write can stay in flight (client timeout plus
  the longest fault); it makes long histories with many unknowns much cheaper to refute.

Why refusals are not checked by default
---------------------------------------
lockd decides every 200 on the store's current value but may decide a refusal on a recent
view (DESIGN.md: "a stale no only makes a node ask again"). A 423 given while a slot had
just been freed is therefore correct behaviour, not a bug, and checking refusals against
the exact state would flag it. With ``strict_refusals=True`` a refused ``lock`` must be
placed where the specification refuses it (``id`` holds nothing and no slot is free); use it
only for servers and histories where that promise holds, and record only "semaphore full"
refusals as ``refused`` (a 423 for a pause or a reboot window is not modelled: leave such
operations out, or keep ``strict_refusals`` off). Refused operations of other kinds are
always dropped: a definite "no" changed nothing, and the model never refuses them.

The search
----------
Wing & Gong's backtracking search with Lowe's just-in-time linearization: walk the calls and
returns in time order; at each step try to linearize one operation that has been invoked but
whose linearization is still pending, and backtrack when an operation's return is reached
before it could be placed. Configurations (the set of linearized operations, the holders,
the slots) are memoised, so each is explored once, with dominance on top: a configuration
is skipped when one seen before placed the same acknowledged operations, had the same state
and spent a subset of its unknown ones (it can do everything this one can). Each further
reduction is sound: it only skips choices equivalent to, or dominated by, one still explored.

- An operation that is a no-op here and wherever else it could still go is placed at once
  and never "un-chosen": moving it earlier breaks nothing, so if no linearization follows
  from placing it, none exists. Reads and checked refusals always qualify; a non-holder's
  unlock does when no grant of that node can be placed before the unlock returns, and a
  holder's re-lock when no release of it can. These two are FleetLock's commonest calls
  (steady-state at every boot, pre-reboot polled by the holder), and without this rule each
  pending one doubles the configurations.
- An unknown operation is never placed where it would change nothing: dropping it explains
  at least as much. Unknown operations with the same kind and arguments (a timed-out request
  retried ten times) are interchangeable, so only the first to expire is ever tried. Unknown
  operations are tried only once no acknowledged one fits: most histories need none.
- When refusals are not checked and the group has no reads and no slot changes, fewer
  holders is never worse (from a subset of the holders, every grant still finds its node
  holding or a slot free). Then unknown locks are left out altogether, since they can only
  make grants fail, and a configuration with a subset of another's holders dominates it.
  This is the usual shape of a fault-injection history, and where most of the speed is.

Limits
------
The problem is NP-complete in general and the search is exponential in the worst case: in
the number of mutually concurrent operations that change state and, above all, of unknown
operations left unresolved (each may take effect at any later instant). ``max_steps`` bounds
each group's search and the verdict is then ``undecided`` rather than a hang. Measured on
simulated histories (3 slots, non-strict): 20,000 operations from 50 concurrent clients
check in about 0.1 s when linearizable; one injected violation is found in well under a
second among 5,000 operations with 2% unknowns, while 20,000 operations with ~170 unknown
unlocks before the violation need ``unknown_horizon`` (then ~3 s). ``strict_refusals`` with
more than a few dozen unknowns in a group is often undecided. Memory: one small record per
configuration explored (the linearized set is stored as "the first f done, then a bitset").

This module is pure Python with no dependency, and imports nothing from lockd: it judges any
FleetLock server from a history recorded on the client side.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["lock", "unlock", "force_unlock", "set_slots", "read"]
Result = Literal["ok", "refused", "unknown"]
Verdict = Literal["linearizable", "violation", "undecided"]

KINDS: tuple[Kind, ...] = ("lock", "unlock", "force_unlock", "set_slots", "read")
RESULTS: tuple[Result, ...] = ("ok", "refused", "unknown")
DEFAULT_MAX_STEPS = 2_000_000
_INF = float("inf")


@dataclass(frozen=True)
class Operation:
    """One operation as a client saw it. Times come from one clock (``time.monotonic()``).

    ``node`` is the FleetLock id (empty for ``set_slots`` and ``read``); ``slots`` is the
    argument of ``set_slots``; ``observed`` is what a ``read`` returned. ``complete`` is
    None when no answer came back; an ``unknown`` operation's completion is ignored anyway.
    """

    process: str
    group: str
    kind: Kind
    node: str
    invoke: float
    complete: float | None
    result: Result
    slots: int | None = None
    observed: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.result not in RESULTS:
            raise ValueError(f"unknown result {self.result!r}")
        if self.result != "unknown" and (self.complete is None or self.complete < self.invoke):
            # An answered operation needs a return no earlier than its call.
            raise ValueError(f"{self.result} operation needs complete >= invoke: {self}")
        if self.kind == "set_slots" and (self.slots is None or self.slots < 0):
            raise ValueError(f"set_slots needs slots >= 0: {self}")
        if self.kind == "read" and self.result == "ok" and self.observed is None:
            raise ValueError(f"an ok read needs its observed holders: {self}")

    def describe(self) -> str:
        what = {"set_slots": f"set_slots({self.slots})", "read": f"read -> {self._seen()}"}
        call = what.get(self.kind, f"{self.kind}({self.node})")
        end = "…" if self.complete is None else f"{self.complete:.6f}"
        return f"{self.process or '?'}: {call} = {self.result} [{self.invoke:.6f}, {end}]"

    def _seen(self) -> str:
        return "{" + ", ".join(sorted(self.observed or ())) + "}"


# --------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class GroupVerdict:
    """The verdict on one group.

    ``linearization`` is a witness order when the group is linearizable (unknown operations
    not in it never happened, or happened after everything else), else the longest
    linearizable prefix the search found; ``blocked`` is then the acknowledged operation
    that could not be placed after that prefix, and ``holders``/``slots`` the state there.
    """

    group: str
    verdict: Verdict
    steps: int
    linearization: tuple[Operation, ...]
    holders: frozenset[str]
    slots: int
    blocked: Operation | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"

    def explain(self) -> str:
        head = f"group {self.group!r}: {self.verdict} after {self.steps} steps"
        if self.ok:
            return head
        lines = [head, f"  longest linearizable prefix ({len(self.linearization)} operations):"]
        lines += [f"    {op.describe()}" for op in self.linearization]
        lines.append(f"  state then: holders={sorted(self.holders)} slots={self.slots}")
        if self.blocked is not None:
            lines.append(f"  cannot be placed next: {self.blocked.describe()}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    groups: Mapping[str, GroupVerdict]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.groups.values())

    @property
    def verdict(self) -> Verdict:
        # A certain violation anywhere outranks a group the budget could not decide.
        found = {v.verdict for v in self.groups.values()}
        for worst in ("violation", "undecided"):
            if worst in found:
                return worst  # type: ignore[return-value]
        return "linearizable"

    def failures(self) -> list[GroupVerdict]:
        return [v for _, v in sorted(self.groups.items()) if not v.ok]

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({len(self.groups)} groups)"
        return "\n".join(v.explain() for v in self.failures())


# --------------------------------------------------------------------------------------------
# The search, on one group


_LOCK, _UNLOCK, _SET_SLOTS, _READ = range(4)
_CODES = {"lock": _LOCK, "unlock": _UNLOCK, "force_unlock": _UNLOCK, "set_slots": _SET_SLOTS,
          "read": _READ}


@dataclass(frozen=True, slots=True)
class _Step:
    """An operation compiled for the search: node ids become bits of a holders mask."""

    op: Operation
    code: int
    bit: int  # the node's bit (lock/unlock)
    arg: int  # set_slots: the new slots; read: the observed holders mask
    result: Result
    index: int  # its bit in the linearized set (known and unknown ops are counted apart)
    uid: int  # unique over both kinds, in invocation order
    twins: tuple[Any, ...] | None = None  # unknown ops: key of its interchangeable twins
    rank: int = 0  # unknown ops: its place among its twins, in invocation order
    deadline: float = _INF  # unknown ops: the latest instant it may take effect


def _apply(s: _Step, holders: int, slots: int) -> tuple[int, int] | None:
    """The state after ``s`` in (holders, slots), or None if ``s`` cannot give its result."""
    if s.code == _LOCK:
        granted = bool(holders & s.bit) or holders.bit_count() < slots
        if s.result == "ok":
            return (holders | s.bit, slots) if granted else None
        if s.result == "refused":
            return None if granted else (holders, slots)
        return (holders | s.bit, slots) if granted else (holders, slots)
    if s.code == _UNLOCK:
        return holders & ~s.bit, slots
    if s.code == _SET_SLOTS:
        return holders, s.arg
    return (holders, slots) if holders == s.arg else None


def _grants_never_help(ops: Sequence[Operation], strict: bool, start: int, slots: int) -> bool:
    """Whether unknown locks can be left out of the search altogether.

    Without checked refusals, reads or slot changes, and with the initial holders within the
    slots, a sequence valid from some holders is valid from any subset of them (never more
    than ``slots`` hold, so a grant whose node no longer holds finds a slot free). Hence
    removing every unknown lock from a valid linearization leaves a valid one: unknown
    locks cannot explain anything, and each one left in would double the configurations.
    And a configuration with fewer holders dominates one with more.
    """
    if strict or start.bit_count() > slots:
        return False
    return not any(op.kind in ("read", "set_slots") for op in ops)


def _kept(op: Operation, strict_refusals: bool) -> bool:
    """Whether ``op`` constrains the search at all; the others changed nothing."""
    if op.result == "refused":
        return strict_refusals and op.kind == "lock"
    if op.kind == "read":
        return op.result == "ok"  # a read that failed observed nothing
    return True


class _Bits:
    """Node id -> one bit of a holders mask."""

    def __init__(self) -> None:
        self.of: dict[str, int] = {}

    def bit(self, node: str) -> int:
        return self.of.setdefault(node, 1 << len(self.of))

    def mask(self, nodes: Iterable[str]) -> int:
        m = 0
        for n in nodes:
            m |= self.bit(n)
        return m

    def names(self, mask: int) -> frozenset[str]:
        return frozenset(n for n, b in self.of.items() if mask & b)


def _compile(ops: Iterable[Operation], strict: bool, bits: _Bits,
             horizon: float | None) -> tuple[list[_Step], list[_Step]]:
    """(acknowledged steps, unknown steps), each in invocation order."""
    known: list[_Step] = []
    unknown: list[_Step] = []
    ranks: dict[tuple[Any, ...], int] = defaultdict(int)
    kept = sorted((o for o in ops if _kept(o, strict)), key=lambda o: o.invoke)
    for uid, op in enumerate(kept):
        code = _CODES[op.kind]
        bit = bits.bit(op.node) if code in (_LOCK, _UNLOCK) else 0
        if code == _SET_SLOTS:
            arg = op.slots or 0
        else:
            arg = bits.mask(op.observed or ())  # 0 for lock and unlock
        if op.result != "unknown":
            known.append(_Step(op, code, bit, arg, op.result, len(known), uid))
            continue
        twins = (code, bit, arg)
        deadline = _INF if horizon is None else op.invoke + horizon
        unknown.append(_Step(op, code, bit, arg, "unknown", len(unknown), uid, twins,
                             ranks[twins], deadline))
        ranks[twins] += 1
    return known, unknown


class _Threats:
    """Per node, the operations that could flip whether it holds, and the first unplaced one.

    "Grants" are the node's locks that may take a slot (acknowledged or unknown; a checked
    refusal changes nothing), "releases" its unlocks and force-unlocks. Both lists are in
    invocation order; ``first`` points at the earliest one not placed, so "can anything make
    this node a holder before time t" is one comparison.
    """

    def __init__(self, steps: Iterable[_Step], size: int) -> None:
        self.lists: dict[tuple[int, bool], list[_Step]] = defaultdict(list)
        for s in sorted(steps, key=lambda s: s.uid):
            if s.code == _UNLOCK or (s.code == _LOCK and s.result != "refused"):
                self.lists[s.bit, s.code == _LOCK].append(s)
        self.where: dict[int, tuple[tuple[int, bool], int]] = {
            s.uid: (k, i) for k, ss in self.lists.items() for i, s in enumerate(ss)}
        self.first: dict[tuple[int, bool], int] = dict.fromkeys(self.lists, 0)
        self.placed = [False] * size
        # Unknown ops by deadline (their invocation order, as the horizon is one constant).
        self.unknown = sorted((s for s in steps if s.twins is not None),
                              key=lambda s: s.deadline)
        self.unknown_deadlines = [s.deadline for s in self.unknown]
        self.timed = any(d < _INF for d in self.unknown_deadlines)

    def place(self, s: _Step) -> None:
        self.placed[s.uid] = True
        at = self.where.get(s.uid)
        if at is not None and at[1] == self.first[at[0]]:
            ss, i = self.lists[at[0]], at[1]
            while i < len(ss) and self.placed[ss[i].uid]:
                i += 1
            self.first[at[0]] = i

    def unplace(self, s: _Step) -> None:
        self.placed[s.uid] = False
        at = self.where.get(s.uid)
        if at is not None and at[1] < self.first[at[0]]:
            self.first[at[0]] = at[1]

    def earliest(self, bit: int, grants: bool, now: float) -> float:
        """The invocation of the node's first grant (or release) that may still be placed.

        An unknown operation whose deadline is before ``now`` can no longer take effect.
        """
        ss = self.lists.get((bit, grants), ())
        for i in range(self.first.get((bit, grants), 0), len(ss)):
            t = ss[i]
            if not self.placed[t.uid] and t.deadline >= now:
                return t.op.invoke
        return _INF

    def first_deadline(self, now: float) -> float:
        """The earliest deadline among unknown ops neither placed nor expired; inf if none."""
        if not self.timed:
            return _INF
        for i in range(bisect.bisect_left(self.unknown_deadlines, now), len(self.unknown)):
            if not self.placed[self.unknown[i].uid]:
                return self.unknown[i].deadline
        return _INF

    def representative(self, twins: Sequence[_Step], now: float) -> _Step | None:
        """The twin to place first: the earliest still unplaced and alive.

        Identical unknown ops are interchangeable, except that one invoked earlier expires
        earlier (with a horizon): spending the first to expire keeps the most options.
        """
        for t in twins:
            if not self.placed[t.uid] and t.deadline >= now:
                return t
        return None


def _stays_noop(s: _Step, holders: int, threats: _Threats, now: float) -> bool:
    """Whether ``s`` is a no-op here and wherever it could still be placed.

    A read or a checked refusal changes nothing wherever it is legal. A non-holder's unlock
    stays a no-op if nothing can make the node a holder before the unlock returns (every
    grant of the node not yet placed was invoked after that); a holder's re-lock likewise if
    nothing can release it first. Such an operation may be placed at once and for good,
    unless placing it moves the clock past the deadline of an unknown op still unspent
    (that op could have gone before it, and now never can).
    """
    if s.op.invoke > now and threats.first_deadline(now) < s.op.invoke:
        return False
    if s.code == _READ or s.result == "refused":
        return True
    if s.result != "ok" or s.op.complete is None:
        return False
    if s.code == _UNLOCK and not holders & s.bit:
        return threats.earliest(s.bit, True, now) > s.op.complete
    if s.code == _LOCK and holders & s.bit:
        return threats.earliest(s.bit, False, now) > s.op.complete
    return False


@dataclass
class _Lists:
    """Two doubly linked lists over one node space, Lowe-style.

    The main list holds the calls and returns of acknowledged operations in time order (a call
    before a return at the same instant: such operations count as concurrent, never ordered).
    The second list holds the calls of unknown operations, which have no return.
    """

    nxt: list[int]
    prv: list[int]
    step: list[_Step | None]
    is_ret: list[bool]
    at: list[float]
    ret_of: dict[int, int]  # call node -> its return node
    head: int
    uhead: int
    utail: int

    def lift(self, k: int) -> None:
        self._remove(k)
        r = self.ret_of.get(k)
        if r is not None:
            self._remove(r)

    def unlift(self, k: int) -> None:
        # Dancing links: undo in the reverse order of lift.
        r = self.ret_of.get(k)
        if r is not None:
            self._restore(r)
        self._restore(k)

    def _remove(self, k: int) -> None:
        self.nxt[self.prv[k]] = self.nxt[k]
        self.prv[self.nxt[k]] = self.prv[k]

    def _restore(self, k: int) -> None:
        self.nxt[self.prv[k]] = k
        self.prv[self.nxt[k]] = k


def _build_lists(known: Sequence[_Step], unknown: Sequence[_Step]) -> _Lists:
    events = sorted([(s.op.invoke, 0, s.index) for s in known]
                    + [(s.op.complete or 0.0, 1, s.index) for s in known])
    m, u = len(events), len(unknown)
    # Nodes: 0 head, 1..m events, m+1 tail, m+2 unknown head, then unknown calls, then tail.
    size = m + u + 4
    nxt = [k + 1 for k in range(size)]
    prv = [k - 1 for k in range(size)]
    step: list[_Step | None] = [None] * size
    is_ret = [False] * size
    at = [0.0] * size
    call_node: dict[int, int] = {}
    ret_of: dict[int, int] = {}
    for k, (t, kind, i) in enumerate(events, start=1):
        step[k], is_ret[k], at[k] = known[i], kind == 1, t
        if kind == 0:
            call_node[i] = k
        else:
            ret_of[call_node[i]] = k
    uhead = m + 2
    for k, s in enumerate(unknown, start=uhead + 1):
        step[k], at[k] = s, s.op.invoke
    return _Lists(nxt, prv, step, is_ret, at, ret_of, 0, uhead, size - 1)


def _frontier_key(lin: int) -> tuple[int, int]:
    """``lin`` as (how many low bits are all set, the rest): small keys on long histories."""
    f = (~lin & (lin + 1)).bit_length() - 1
    return f, lin >> f


@dataclass
class _Search:
    """The mutable state of one group's search; ``run`` is the loop."""

    lists: _Lists
    threats: _Threats
    holders: int
    slots: int
    remaining: int  # acknowledged operations not yet linearized
    max_steps: int
    twins: Mapping[tuple[Any, ...], Sequence[_Step]]
    timed: bool  # unknown ops have deadlines: then ``now`` is part of a configuration
    monotone: bool  # fewer holders is never worse (see ``_grants_never_help``)
    now: float = -_INF  # the latest invocation placed: no later op may take effect before it
    lin_known: int = 0
    lin_unknown: int = 0
    steps: int = 0
    # (acknowledged set, holders, slots, clock) -> the (holders, spent unknown ops) pairs seen
    # with it, as an antichain (see ``dominated``). Holders move out of the base into the
    # pair when fewer holders is never worse.
    seen: dict[tuple[Any, ...], list[tuple[int, int]]] = field(default_factory=dict)
    # (node, step, holders before, slots before, now before, forced, blocking return or -1)
    stack: list[tuple[int, _Step, int, int, float, bool, int]] = field(default_factory=list)
    best: tuple[list[_Step], _Step | None, int, int] = field(
        default_factory=lambda: ([], None, 0, 0))

    def key(self, s: _Step, after: tuple[int, int]) -> tuple[tuple[Any, ...], int, int]:
        """The configuration after placing ``s``: (base, holders, spent unknown ops).

        With deadlines the clock is part of the base too: a configuration further on in time
        has fewer unknown ops alive, so it cannot stand in for one that is earlier.
        """
        known, unknown = self.lin_known, self.lin_unknown
        if s.twins is None:
            known |= 1 << s.index
        else:
            unknown |= 1 << s.index
        clock = max(self.now, s.op.invoke) if self.timed else 0.0
        holders, slots = after
        if self.monotone:
            return (*_frontier_key(known), slots, clock), holders, unknown
        return (*_frontier_key(known), holders, slots, clock), 0, unknown

    def dominated(self, base: tuple[Any, ...], holders: int, spent: int) -> bool:
        """Whether a configuration seen before had this base, no more holders (when that is
        never worse) and spent no more unknown ops.

        Such a configuration can do everything this one can (the same acknowledged ops left,
        a state at least as good, every unknown op this one still has), and it has failed or
        is an ancestor still being explored; either way exploring this one adds nothing. An
        exact repeat is the special case of equal sets. Sound by induction on the length of
        the shortest completion; the tests compare it with a brute-force search.
        """
        pairs = self.seen.get(base)
        if pairs is None:
            self.seen[base] = [(holders, spent)]
            return False
        if any(h & ~holders == 0 and u & ~spent == 0 for h, u in pairs):
            return True
        # Keep an antichain: a pair this one dominates can never prune more than it does.
        pairs[:] = [(h, u) for h, u in pairs if holders & ~h or spent & ~u]
        pairs.append((holders, spent))
        return False

    def place(self, node: int, s: _Step, after: tuple[int, int], forced: bool,
              limit: int) -> None:
        self.stack.append((node, s, self.holders, self.slots, self.now, forced, limit))
        self.lists.lift(node)
        self.threats.place(s)
        self.holders, self.slots = after
        self.now = max(self.now, s.op.invoke)
        if s.twins is None:
            self.lin_known |= 1 << s.index
            self.remaining -= 1
        else:
            self.lin_unknown |= 1 << s.index

    def unplace(self) -> tuple[int, bool, int]:
        node, s, self.holders, self.slots, self.now, forced, limit = self.stack.pop()
        self.lists.unlift(node)
        self.threats.unplace(s)
        if s.twins is None:
            self.lin_known &= ~(1 << s.index)
            self.remaining += 1
        else:
            self.lin_unknown &= ~(1 << s.index)
        return node, forced, limit

    def backtrack(self) -> tuple[int, int] | None:
        """Undo the last free choice; (where to resume, its phase), or None if none is left."""
        while self.stack:
            node, forced, limit = self.unplace()
            if not forced:  # a forced no-op failing means the choice before it failed
                return self.lists.nxt[node], limit
        return None

    def note_blocked(self, blocking: int) -> None:
        if len(self.stack) > len(self.best[0]) or self.best[1] is None:
            self.best = ([s for _, s, *_ in self.stack], self.lists.step[blocking],
                         self.holders, self.slots)

    def consider(self, node: int, s: _Step, limit: int) -> bool | None:
        """Try to linearize ``s`` now: True placed, False skip it, None backtrack."""
        if s.twins is not None and self.threats.representative(self.twins[s.twins],
                                                               self.now) is not s:
            return False  # expired, or an identical unknown op that expires first goes first
        after = _apply(s, self.holders, self.slots)
        if after is None:
            return False
        if s.twins is not None and after == (self.holders, self.slots):
            return False  # "never happened" explains at least as much
        forced = _stays_noop(s, self.holders, self.threats, self.now)
        if self.dominated(*self.key(s, after)):
            # A forced op leads to the only child worth exploring: if that fails, so does this.
            return None if forced else False
        self.place(node, s, after, forced, limit)
        return True

    def run(self) -> Verdict:
        ls = self.lists
        cursor, limit = ls.nxt[ls.head], -1  # limit: the blocking return, in the unknown phase
        while self.remaining:
            self.steps += 1
            if self.steps > self.max_steps:
                return "undecided"
            if limit < 0 and ls.is_ret[cursor]:
                # No acknowledged op fits before this return: try the unknown ones.
                cursor, limit = ls.nxt[ls.uhead], cursor
                continue
            if limit >= 0 and (cursor == ls.utail or ls.at[cursor] > ls.at[limit]):
                self.note_blocked(limit)
                resume = self.backtrack()
                if resume is None:
                    return "violation"
                cursor, limit = resume
                continue
            s = ls.step[cursor]
            assert s is not None
            outcome = self.consider(cursor, s, limit)
            if outcome is True:
                cursor, limit = ls.nxt[ls.head], -1
            elif outcome is False:
                cursor = ls.nxt[cursor]
            else:
                resume = self.backtrack()
                if resume is None:
                    return "violation"
                cursor, limit = resume
        return "linearizable"


def check_group(
    ops: Iterable[Operation],
    slots: int,
    *,
    group: str = "",
    initial_holders: Iterable[str] = (),
    strict_refusals: bool = False,
    unknown_horizon: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> GroupVerdict:
    """Whether one group's operations are linearizable; see the module docstring."""
    bits = _Bits()
    start = bits.mask(initial_holders)
    ops = list(ops)
    monotone = _grants_never_help(ops, strict_refusals, start, slots)
    if monotone:
        ops = [op for op in ops if not (op.kind == "lock" and op.result == "unknown")]
    known, unknown = _compile(ops, strict_refusals, bits, unknown_horizon)
    threats = _Threats([*known, *unknown], len(known) + len(unknown))
    twins: dict[tuple[Any, ...], list[_Step]] = defaultdict(list)
    for u in unknown:  # in invocation order, so each list is in rank order
        assert u.twins is not None
        twins[u.twins].append(u)
    search = _Search(_build_lists(known, unknown), threats, start, slots, len(known),
                     max_steps, twins, unknown_horizon is not None, monotone)
    search.best = ([], None, start, slots)
    verdict = search.run()
    if verdict == "linearizable":
        order = [s for _, s, *_ in search.stack]
        return GroupVerdict(group, verdict, search.steps, tuple(s.op for s in order),
                            bits.names(search.holders), search.slots)
    prefix, blocked, holders, now_slots = search.best
    return GroupVerdict(group, verdict, search.steps, tuple(s.op for s in prefix),
                        bits.names(holders), now_slots, blocked.op if blocked else None)


def check(
    history: Iterable[Operation],
    slots: int | Mapping[str, int],
    *,
    initial_holders: Mapping[str, Iterable[str]] | None = None,
    strict_refusals: bool = False,
    unknown_horizon: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> CheckResult:
    """Check every group of ``history``, each on its own.

    ``slots`` is the slot count every group starts with (one int for all, or per group);
    ``initial_holders`` the holders each group starts with (default: none). With
    ``unknown_horizon`` an unknown operation takes effect within that many seconds of its
    invocation or never (default: any time later). ``max_steps`` bounds each group's search.
    """
    by_group = partition(history)
    for g in initial_holders or {}:
        by_group.setdefault(g, [])
    verdicts = {}
    if not isinstance(slots, int) and (missing := sorted(set(by_group) - set(slots))):
        raise ValueError(f"no slot count given for groups {missing}")
    for g, ops in sorted(by_group.items()):
        start = slots if isinstance(slots, int) else slots[g]
        held = (initial_holders or {}).get(g, ())
        verdicts[g] = check_group(ops, start, group=g, initial_holders=held,
                                  strict_refusals=strict_refusals,
                                  unknown_horizon=unknown_horizon, max_steps=max_steps)
    return CheckResult(verdicts)


def partition(history: Iterable[Operation]) -> dict[str, list[Operation]]:
    by_group: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        by_group[op.group].append(op)
    return dict(by_group)


# --------------------------------------------------------------------------------------------
# Durability: acknowledged grants still held at the end


@dataclass(frozen=True)
class DurabilityResult:
    """Grants acknowledged (lock = ok), never possibly released, yet missing at the end."""

    lost: tuple[Operation, ...]

    @property
    def ok(self) -> bool:
        return not self.lost

    def explain(self) -> str:
        if self.ok:
            return "every unreleased grant is still held"
        return "\n".join(f"lost grant: {op.group}/{op.node}: {op.describe()}" for op in self.lost)


def _may_release(u: Operation, grant: Operation) -> bool:
    """Whether ``u`` may have taken effect after ``grant`` (so ``grant`` may be released).

    An unknown release counts too: it may have happened after the grant, and then the grant
    is legitimately gone. Only a release that certainly finished before the grant was even
    sent (strictly: equal instants count as concurrent) cannot have ended it.
    """
    if u.kind not in ("unlock", "force_unlock") or u.result == "refused":
        return False
    if (u.group, u.node) != (grant.group, grant.node):
        return False
    return u.result == "unknown" or u.complete is None or u.complete >= grant.invoke


def check_durability(
    history: Iterable[Operation], final_holders: Mapping[str, Iterable[str]]
) -> DurabilityResult:
    """Every acknowledged grant that no release may have ended must be held at the end.

    ``final_holders`` is the holders observed per group once every client has stopped; each
    group with a grant must be present (an empty set if the store shows none), so that a
    group left out by mistake is an error rather than a silent pass. A run that then asks
    the store again adds nothing: pass ``read`` operations to ``check`` for the stronger,
    exact check (every holder explained, none missing).
    """
    ops = list(history)
    grants = [op for op in ops if op.kind == "lock" and op.result == "ok"]
    missing = sorted({g.group for g in grants} - set(final_holders))
    if missing:
        raise ValueError(f"no final holders given for groups {missing}")
    releases = [op for op in ops if op.kind in ("unlock", "force_unlock")]
    final = {g: frozenset(h) for g, h in final_holders.items()}
    lost: dict[tuple[str, str], Operation] = {}
    for grant in sorted(grants, key=lambda o: o.invoke):
        if grant.node in final[grant.group]:
            continue
        if not any(_may_release(u, grant) for u in releases):
            lost[grant.group, grant.node] = grant  # the latest such grant per node
    return DurabilityResult(tuple(lost.values()))


# --------------------------------------------------------------------------------------------
# Recording


def result_from_status(status: int | None) -> Result:
    """An HTTP status as a history result; None means no answer (timeout, reset).

    2xx took effect. A 4xx is a decision not to act (423 full or paused, 429, 400), except
    408, which is a transport failure. Everything else (503 "not decided yet", any other
    5xx, no answer) may or may not have taken effect.
    """
    if status is None:
        return "unknown"
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 and status != 408:
        return "refused"
    return "unknown"


@dataclass
class _Pending:
    process: str
    group: str
    kind: Kind
    node: str
    invoke: float
    slots: int | None
    complete: float | None = None
    result: Result = "unknown"
    observed: frozenset[str] | None = None
    done: bool = False


class HistoryRecorder:
    """Stamps operations as clients run them; safe from asyncio tasks and from threads.

    Call ``invoke`` just before sending a request and ``complete`` just after its answer
    (or its failure). An operation never completed is ``unknown``. The clock must be one
    clock for every client (``time.monotonic`` is per host: record in one process, or
    at least on one machine).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ops: list[_Pending] = []
        self._lock = threading.Lock()

    def invoke(self, kind: Kind, group: str, node: str = "", *, process: str = "",
               slots: int | None = None) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        with self._lock:
            self._ops.append(_Pending(process, group, kind, node, self._clock(), slots))
            return len(self._ops) - 1

    def complete(self, token: int, result: Result, *,
                 observed: Iterable[str] | None = None) -> None:
        if result not in RESULTS:
            raise ValueError(f"unknown result {result!r}")
        with self._lock:
            p = self._ops[token]
            if p.done:
                raise ValueError(f"operation {token} completed twice")
            p.complete, p.result, p.done = self._clock(), result, True
            p.observed = None if observed is None else frozenset(observed)

    def complete_status(self, token: int, status: int | None) -> None:
        self.complete(token, result_from_status(status))

    @contextmanager
    def recording(self, kind: Kind, group: str, node: str = "", *, process: str = "",
                  slots: int | None = None) -> Iterator[_Outcome]:
        """``with rec.recording("lock", g, id) as out: ... out.status = resp.status``.

        Leaving the block by an exception, or without setting a status, records unknown.
        Usable around ``await`` in asyncio code (it is a plain context manager).
        """
        token = self.invoke(kind, group, node, process=process, slots=slots)
        out = _Outcome()
        try:
            yield out
        finally:
            result = result_from_status(out.status) if out.result is None else out.result
            self.complete(token, result, observed=out.observed)

    def history(self) -> list[Operation]:
        with self._lock:
            return [self._freeze(p) for p in self._ops]

    @staticmethod
    def _freeze(p: _Pending) -> Operation:
        result = p.result if p.done else "unknown"
        observed = p.observed if p.kind == "read" and result == "ok" else None
        if p.kind == "read" and result == "ok" and observed is None:
            result = "unknown"  # an ok read that recorded nothing observed nothing
        return Operation(p.process, p.group, p.kind, p.node, p.invoke, p.complete, result,
                         p.slots, observed)


@dataclass
class _Outcome:
    """What the body of ``HistoryRecorder.recording`` learnt: a status or a result."""

    status: int | None = None
    result: Result | None = None
    observed: Iterable[str] | None = None


# --------------------------------------------------------------------------------------------
# Saving histories (to keep a failing one as a test artefact)


def history_to_json(history: Iterable[Operation]) -> str:
    rows = []
    for op in history:
        row = dict(op.__dict__)
        row["observed"] = None if op.observed is None else sorted(op.observed)
        rows.append(row)
    return json.dumps(rows, indent=1)


def history_from_json(text: str) -> list[Operation]:
    ops = []
    for row in json.loads(text):
        seen = row.get("observed")
        row["observed"] = None if seen is None else frozenset(seen)
        ops.append(Operation(**row))
    return ops
