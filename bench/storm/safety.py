"""The storm's independent safety check: at most ``slots`` holders per group at any instant.

It reads only what the simulated nodes saw, so it judges any FleetLock server, not only
lockd. A node certainly held a slot from the moment it *received* a 200 for ``pre-reboot``
("grant") until the moment it *sent* its first ``steady-state`` after rebooting
("release"): the server granted before the first and cannot have released before the
second. A node that died while holding holds until the end of the record. Every recorded
interval is therefore inside the true hold, so more than ``slots`` overlapping intervals
is a real violation (no false positives); timestamps from several machines are only as
good as their clocks.

One exception keeps the check honest: a ``steady-state`` the server has not *decided* when
the node gives up on it may still be applied later, at any moment after it was sent. A
hold granted after such a request of the same node could be ended by it at any time, so
that hold is *uncertain*: it is left out of the verdict and counted. A request that got an
answer has been decided by the time the answer arrives (applied or not), unless the answer
says otherwise, so only these are undecided:

- no answer at all: a timeout, a reset, a refused connection (recorded as ``unsure``);
- an answer whose kind (as zincati sees it: ``kind`` from the JSON body, else
  ``generic_http_<status>``; or ``kind~text``, that kind with ``text`` in its ``value``)
  is in the *undecided kinds*, by default
  :data:`DEFAULT_UNDECIDED`: lockd's two 503 kinds that mean "not decided yet" (a write
  handed to the store whose outcome is unknown) and a 503 or 504 without a parseable body
  (a proxy or load balancer that gave up waiting for the server).

Any other non-200 answer (a 4xx, airlock's 500 ``failed_lock``, a 423) is recorded as
``failed:<kind>:<value>`` and is decided: the release was not applied and never will be. A server
whose errors may be applied later can say so with its own kinds (``--undecided-kinds``);
``*`` treats every non-200 answer as undecided (the most cautious reading). The verdict is
given both ways: on the certain holds only (no false positives) and with the uncertain
holds counted as if certain (a violation there may instead be a release applied late).

Pure Python with no dependency, so the test suite imports it without locust.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

#: One recorded event: (time, node id, group, what) with what in
#: ask (first pre-reboot sent), grant, release, done (steady-state 200), die,
#: unsure (a steady-state sent at this time that got no answer) and
#: failed:<kind>:<value> (a steady-state sent at this time that got that non-200 answer).
Event = tuple[float, str, str, str]

#: Kinds of answer that mean "not decided yet": see the module docstring.
DEFAULT_UNDECIDED: frozenset[str] = frozenset(
    {"backend_unavailable", "backend_contention", "generic_http_503", "generic_http_504"})

#: In an undecided set: every non-200 answer is undecided.
ANY = "*"

FAILED = "failed:"


def parse_undecided(text: str) -> frozenset[str]:
    """``"a,b"`` -> {a, b}; ``"default"`` (alone or in the list) adds the default set."""
    kinds: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if item == "default":
            kinds |= DEFAULT_UNDECIDED
        elif item:
            kinds.add(item)
    return frozenset(kinds)


def failed_event(kind: str, value: str) -> str:
    """The record's ``what`` for a non-200 steady-state: ``failed:<kind>:<value>``."""
    return f"{FAILED}{kind}:{' '.join(value.split())[:160]}"


def is_undecided(what: str, undecided: Collection[str] = DEFAULT_UNDECIDED) -> bool:
    """Whether a recorded steady-state outcome leaves the release possibly pending.

    An entry of ``undecided`` is a kind (``failed_lock``), ``kind~text`` (that kind with
    ``text`` in its value: airlock answers 500 ``failed_lock`` both for a conflict, decided,
    and for an etcd ``context deadline exceeded``, which may commit later), or ``*``.
    """
    if what == "unsure":
        return True
    if not what.startswith(FAILED):
        return False
    if ANY in undecided:
        return True
    kind, _, value = what[len(FAILED):].partition(":")
    if kind in undecided:
        return True
    return any(entry.partition("~")[0] == kind and entry.partition("~")[2] in value
               for entry in undecided if "~" in entry)


@dataclass(frozen=True)
class Hold:
    group: str
    node: str
    start: float
    end: float


@dataclass(frozen=True)
class GroupVerdict:
    group: str
    slots: int
    max_holders: int
    at: float  # when the maximum was first reached
    holders: tuple[str, ...]  # who held then

    @property
    def ok(self) -> bool:
        return self.max_holders <= self.slots


def holds_from_events(events: Iterable[Event], end: float,
                      undecided: Collection[str] = DEFAULT_UNDECIDED) -> list[Hold]:
    """Certain hold intervals from a record; a grant never released holds until ``end``."""
    return split_holds(events, end, undecided)[0]


def split_holds(events: Iterable[Event], end: float,
                undecided: Collection[str] = DEFAULT_UNDECIDED,
                ) -> tuple[list[Hold], list[Hold]]:
    """(certain, uncertain) hold intervals; see the module docstring for "uncertain".

    A node may be granted more than once (a later run, or a re-grant after a lost
    release); each grant pairs with the next release of the same node.
    """
    open_: dict[str, tuple[str, float]] = {}
    unsure_since: dict[str, float] = {}
    certain: list[Hold] = []
    uncertain: list[Hold] = []

    def close(node: str, group: str, start: float, stop: float) -> None:
        hold = Hold(group, node, start, stop)
        unsure = unsure_since.get(node)
        (uncertain if unsure is not None and unsure <= start else certain).append(hold)

    # At equal times an undecided request sorts first: one sent at the grant instant counts.
    for t, node, group, what in sorted(
            events, key=lambda e: (e[0], not is_undecided(e[3], undecided))):
        if what == "grant":
            if node not in open_:  # a repeated 200 while holding is the same hold
                open_[node] = (group, t)
        elif what == "release" and node in open_:
            g, start = open_.pop(node)
            close(node, g, start, t)
        elif is_undecided(what, undecided):
            unsure_since.setdefault(node, t)
    for node, (group, start) in open_.items():
        close(node, group, start, max(end, start))
    return certain, uncertain


def max_holders(holds: Sequence[Hold]) -> dict[str, tuple[int, float, tuple[str, ...]]]:
    """Per group: the most holds open at one instant, when first, and whose."""
    by_group: dict[str, list[Hold]] = defaultdict(list)
    for h in holds:
        by_group[h.group].append(h)
    result: dict[str, tuple[int, float, tuple[str, ...]]] = {}
    for group, items in by_group.items():
        # At equal times ends sort before starts: [a, t] and [t, b] do not overlap, since
        # the second grant was received after the first release was sent.
        points = sorted([(h.start, 1, h.node) for h in items] +
                        [(h.end, 0, h.node) for h in items])
        current: dict[str, int] = defaultdict(int)
        count = 0
        best: tuple[int, float, tuple[str, ...]] = (0, 0.0, ())
        for t, is_start, node in points:
            if is_start:
                current[node] += 1
                count += 1
                if count > best[0]:
                    best = (count, t, tuple(sorted(n for n, c in current.items() if c)))
            else:
                current[node] -= 1
                count -= 1
        result[group] = best
    return result


def verdict(holds: Sequence[Hold], slots: int | Mapping[str, int]) -> list[GroupVerdict]:
    """One verdict per group that had any holder, sorted by group name."""
    out = []
    for group, (n, at, who) in sorted(max_holders(holds).items()):
        limit = slots if isinstance(slots, int) else slots[group]
        out.append(GroupVerdict(group, limit, n, at, who))
    return out


def violations(holds: Sequence[Hold], slots: int | Mapping[str, int]) -> list[GroupVerdict]:
    return [v for v in verdict(holds, slots) if not v.ok]
