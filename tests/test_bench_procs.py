"""bench.procs.free_port: ports for the servers the tests and benchmarks start."""

from __future__ import annotations

import random
import socket

import pytest

from bench.procs import Lockd, _ephemeral_range, free_port


def test_free_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    # Below the range that outgoing connections take their source ports from.
    assert all(1024 < p < low for p in ports)
    for p in ports[:10]:  # and free: each can be listened on
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
            s.listen()


def test_a_port_in_use_is_not_handed_out() -> None:
    """900 listeners spread over the range by this test, not by free_port: 500 picks would
    land on about 20 of them without free_port's own bind check."""
    low, _ = _ephemeral_range()
    taken: list[socket.socket] = []
    try:
        for port in random.Random(7).sample(range(10000, low), 2000):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen()
            taken.append(s)
            if len(taken) == 900:
                break
        in_use = {s.getsockname()[1] for s in taken}
        assert not {free_port() for _ in range(500)} & in_use
    finally:
        for s in taken:
            s.close()


def test_a_cluster_whose_node_cannot_start_leaves_no_server_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.servers import RedisClusterServer

    cluster = RedisClusterServer(tmp_path / "cluster", replicas=0)
    blocker = socket.socket()
    # Bound, not listening: the second node's bind fails, and nothing answers on its port.
    blocker.bind(("127.0.0.1", cluster.nodes[1].port))
    started = []
    first = cluster.nodes[0]
    real_start = first.start

    def start_and_note():  # type: ignore[no-untyped-def]
        node = real_start()
        started.append(node.proc.proc)  # the real redis-server of the first node
        return node

    first.start = start_and_note  # type: ignore[method-assign]
    try:
        try:
            cluster.start()
        except RuntimeError:
            pass
        else:
            raise AssertionError("the cluster started on a port in use")
        assert len(started) == 1
        assert started[0].poll() is not None, "the first node's redis-server was left running"
    finally:
        blocker.close()
        cluster.stop()  # by PID, for the failing case


def test_a_lockd_that_does_not_start_in_time_is_not_left_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A wrapper that never runs lockd: the process lives on, and never says it serves.
    lockd = Lockd(tmp_path, wrapper=["sh", "-c", "exec sleep 60", "--"])
    with pytest.raises(TimeoutError):
        lockd.start(timeout=0.5)
    assert lockd.proc is not None and lockd.proc.proc is not None
    assert lockd.proc.proc.poll() is not None  # stopped by start itself
