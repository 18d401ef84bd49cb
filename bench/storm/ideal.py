"""The polling-aware ideal: the same storm against a server that answers instantly and right.

A reboot storm drains slower than ``ceil(nodes / slots) x reboot`` even on a perfect server,
because FleetLock clients poll: a freed slot stays free until the next waiting node's tick,
and a node only starts asking somewhere in its first period. To measure the *server*, the
storm compares its drain with this deterministic discrete-event simulation of the very same
nodes against a server that grants and releases at the instant a request arrives and never
fails. The ratio ``measured drain / simulated drain`` is then about 1.0 for a perfect server
whatever the period, the reboot time or the number of nodes.

The simulated nodes are the storm's nodes (``locustfile.py``), draw for draw:

- node *i* is in group ``group_names[i % len(group_names)]`` and boots when locust starts
  it: locust starts ``floor(spawn_rate)`` users at once, then waits for the next batch
  (:func:`boot_time`; all at 0 without a spawn rate);
- its random stream is ``random.Random(f"{seed}/{i}")``; the first draw decides whether it
  dies holding (``< die_fraction``);
- its boot ``steady-state`` succeeds at once (the server is perfect); it sees the update
  ``uniform(0, period)`` later and sends ``pre-reboot``;
- refused, it asks again ``period x (1 + uniform(0, 0.1))`` later (zincati's jitter);
- granted, it reboots for ``reboot`` seconds and then sends ``steady-state``, which frees the
  slot at that instant; a node that dies holding never does.

Same seed, same draws: the simulation and a storm whose boot ``steady-state`` got 200 at once
share each node's first-ask moment and jitter. Everything is in the storm's (scaled) seconds.
Pure Python, no dependency, deterministic: equal times are ordered release first, then by
node index.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

#: zincati's refresh jitter: each period is stretched by uniform(0, JITTER).
JITTER = 0.1

_RELEASE, _ASK = 0, 1  # at equal times a release is applied before an ask


def boot_time(index: int, spawn_rate: float) -> float:
    """When locust starts user ``index``: batches of floor(rate) users, one batch per
    floor(rate) / rate seconds (locust's dispatcher); at 0 without a rate."""
    if spawn_rate <= 0:
        return 0.0
    batch = max(1, int(spawn_rate))
    return (index // batch) * batch / spawn_rate


def node_rng(seed: int, index: int) -> random.Random:
    """The random stream of node ``index`` (locustfile.py seeds its nodes the same way)."""
    return random.Random(f"{seed}/{index}")


@dataclass
class Simulation:
    """What the perfect server saw: per group, first grant, last release, counts."""

    group_names: tuple[str, ...]
    slots: int
    first_grant: dict[str, float] = field(default_factory=dict)
    last_release: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    asks: int = 0  # pre-reboot requests sent
    refusals: int = 0
    events: list[tuple[float, str, str, str]] = field(default_factory=list)

    def drain(self, group: str) -> float | None:
        """First grant to last release, the storm's measure; None if the group never drained."""
        if self.dead.get(group) or self.released.get(group, 0) < self.nodes.get(group, 0):
            return None
        if group not in self.first_grant:
            return None
        return self.last_release[group] - self.first_grant[group]

    def drains(self) -> dict[str, float | None]:
        return {g: self.drain(g) for g in self.group_names}


def simulate(
    *,
    nodes: int,
    group_names: Sequence[str],
    slots: int,
    period: float,
    reboot: float,
    seed: int = 0,
    die_fraction: float = 0.0,
    spawn_rate: float = 0.0,
    keep_events: bool = False,
) -> Simulation:
    """Run the storm against a perfect server; see the module docstring for the model.

    ``keep_events`` keeps a record in the storm's format ((t, node, group, what) with
    ask/grant/release/done/die) so that the storm's own checker can read it.
    """
    if slots < 1:
        raise ValueError("slots must be at least 1")
    if not group_names:
        raise ValueError("at least one group")
    names = tuple(group_names)
    sim = Simulation(names, slots)
    holders = dict.fromkeys(names, 0)
    dead = dict.fromkeys(names, 0)
    sim.nodes = dict.fromkeys(names, 0)
    sim.released = dict.fromkeys(names, 0)
    rngs: list[random.Random] = []
    dies: list[bool] = []
    heap: list[tuple[float, int, int]] = []
    asked: set[int] = set()

    def note(t: float, i: int, what: str) -> None:
        if keep_events:
            sim.events.append((t, f"n{i}", names[i % len(names)], what))

    for i in range(nodes):
        rng = node_rng(seed, i)
        rngs.append(rng)
        dies.append(rng.random() < die_fraction)
        sim.nodes[names[i % len(names)]] += 1
        heapq.heappush(heap, (boot_time(i, spawn_rate) + rng.uniform(0.0, period), _ASK, i))

    while heap:
        t, what, i = heapq.heappop(heap)
        group = names[i % len(names)]
        if what == _RELEASE:
            holders[group] -= 1
            sim.released[group] += 1
            sim.last_release[group] = t
            note(t, i, "release")
            note(t, i, "done")
            continue
        sim.asks += 1
        if i not in asked:
            asked.add(i)
            note(t, i, "ask")
        if holders[group] < slots:
            holders[group] += 1
            sim.first_grant.setdefault(group, t)
            note(t, i, "grant")
            if dies[i]:
                dead[group] += 1
                sim.dead[group] = dead[group]
                note(t, i, "die")
            else:
                heapq.heappush(heap, (t + reboot, _RELEASE, i))
        else:
            sim.refusals += 1
            if dead[group] >= slots:
                continue  # every slot is held by a dead node: this node waits forever
            heapq.heappush(heap, (t + period * (1.0 + rngs[i].uniform(0.0, JITTER)), _ASK, i))
    return sim
