"""The polling-aware ideal (bench/storm/ideal.py): a storm against a perfect server, simulated.

All times here are simulated seconds: nothing is timed on the wall clock.
"""

from __future__ import annotations

import math

import pytest

from bench.storm.ideal import JITTER, boot_time, simulate
from bench.storm.report import drain, polling_ideal
from bench.storm.safety import holds_from_events, verdict

NAMES = ["g0", "g1", "g2", "g3"]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("nodes, period, reboot", [(10, 1.0, 0.2), (25, 300.0, 60.0),
                                                    (8, 1.0, 3.0)])
def test_one_slot_drains_n_nodes_within_known_bounds(seed: int, nodes: int, period: float,
                                                     reboot: float) -> None:
    sim = simulate(nodes=nodes, group_names=["g"], slots=1, period=period, reboot=reboot,
                   seed=seed)
    took = sim.drain("g")
    assert took is not None
    # One slot: the N holds of `reboot` seconds cannot overlap...
    assert took >= nodes * reboot - 1e-9
    # ...and after each release some node asks within one jittered period.
    assert took <= nodes * reboot + (nodes - 1) * period * (1 + JITTER) + 1e-9


def test_enough_slots_means_nobody_waits() -> None:
    sim = simulate(nodes=12, group_names=["g"], slots=12, period=10.0, reboot=2.0, seed=3)
    assert sim.refusals == 0 and sim.asks == 12
    # Everyone asks within the first period and reboots once.
    assert 2.0 <= sim.drain("g") <= 10.0 + 2.0


@pytest.mark.parametrize("seed", range(4))
def test_more_slots_drain_faster(seed: int) -> None:
    kw = dict(nodes=200, group_names=NAMES, period=1.0, reboot=0.2, seed=seed)
    by_slots = [simulate(slots=s, **kw).drains() for s in (1, 2, 4)]
    for group in NAMES:
        one, two, four = (d[group] for d in by_slots)
        assert one > two > four


def test_the_perfect_server_is_safe_and_everyone_reboots_once() -> None:
    sim = simulate(nodes=60, group_names=NAMES, slots=2, period=1.0, reboot=0.3, seed=1,
                   keep_events=True)
    holds = holds_from_events(sim.events, end=1e9)
    assert len(holds) == 60
    assert all(v.ok and v.max_holders == 2 for v in verdict(holds, 2))
    assert sorted(sim.nodes.values()) == [15] * 4 and sim.released == sim.nodes


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    kw = dict(nodes=40, group_names=NAMES, slots=1, period=1.0, reboot=0.1, spawn_rate=20)
    assert simulate(seed=7, **kw).drains() == simulate(seed=7, **kw).drains()
    assert simulate(seed=7, **kw).drains() != simulate(seed=8, **kw).drains()


def test_nodes_are_spread_over_groups_like_the_storm() -> None:
    sim = simulate(nodes=10, group_names=["a", "b", "c"], slots=1, period=1.0, reboot=0.1)
    assert sim.nodes == {"a": 4, "b": 3, "c": 3}


def test_a_group_whose_slots_are_held_by_dead_nodes_never_drains_and_the_run_ends() -> None:
    sim = simulate(nodes=30, group_names=["g"], slots=1, period=1.0, reboot=0.1,
                   die_fraction=1.0)
    assert sim.drain("g") is None and sim.dead == {"g": 1}


def test_locust_starts_users_in_batches_of_the_spawn_rate() -> None:
    assert [boot_time(i, 0) for i in range(3)] == [0.0, 0.0, 0.0]
    assert [boot_time(i, 2) for i in range(5)] == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert boot_time(3, 0.5) == 6.0
    # A slow ramp delays the drain of the late groups' first grant, not the ideal's shape.
    assert simulate(nodes=20, group_names=["g"], slots=20, period=1.0, reboot=0.1,
                    spawn_rate=2).drain("g") >= 9.0


def test_the_storm_reads_its_ideal_from_its_params() -> None:
    params = {"nodes": 40, "group_names": ["x", "y"], "scaled_period_s": 1.0,
              "scaled_reboot_s": 0.2, "seed": 0, "spawn_rate": 40, "die_fraction": 0.0}
    got = polling_ideal(params, slots=2)
    want = simulate(nodes=40, group_names=["x", "y"], slots=2, period=1.0, reboot=0.2,
                    spawn_rate=40).drains()
    assert got == want and all(v is not None and v >= math.ceil(20 / 2) * 0.2 for v in
                               got.values())
    assert polling_ideal({}, slots=2) is None


def test_a_perfect_server_scores_one_against_its_ideal() -> None:
    # The simulation's own record, read as a storm's: the storm's drain measure and the
    # ideal's agree, so a server as good as the simulated one scores exactly 1.0.
    sim = simulate(nodes=60, group_names=NAMES, slots=2, period=1.0, reboot=0.3, seed=2,
                   keep_events=True)
    nodes = {node: group for _t, node, group, _what in sim.events}
    result = drain(sim.events, nodes, slots=2, reboot=0.3, polling=sim.drains())
    assert result["complete_groups"] == 4
    assert result["polling_ratio_median"] == pytest.approx(1.0)
    assert result["polling_ratio_max"] == pytest.approx(1.0)
    # Against ceil(nodes/slots) x reboot the same perfect server looks slow: polling.
    assert result["ratio_median"] > 1.2
