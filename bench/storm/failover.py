"""A reboot storm on a Redis Cluster whose master is killed mid-way (issue #15).

    .venv-bench/bin/python -m bench.storm.failover --kill-at 60 \\
        --lockd ".venv/bin/lockd serve" --replicas 3 --server-cpus 0 --locust-cpus 1 \\
        --nodes 10000 --groups 100 --slots 2 --time-scale 1/30 --spawn-rate 1000

Starts ``bench.servers.RedisClusterServer`` (3 masters, one replica each, AOF with
``appendfsync always``, a 1 s node timeout) in a temporary directory, pinned to
``--server-cpus``; then ``bench.storm.run`` with every other argument given, its ``--lockd``
command pointed at the cluster (``--backend redis+cluster://...``), and one mid-run hook:
``kill -9`` of the first master at ``--kill-at`` seconds. After the storm it checks that the
cluster is whole again (its replica promoted: 3 masters, every slot served) and prints which
node was killed and which one took over. Exit status: the storm's (0 safe and complete),
or 6 if the cluster did not fail over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.servers import RedisClusterServer
from bench.storm import run
from bench.throughput import pin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kill-at", type=float, required=True, metavar="SECONDS",
                   help="kill -9 one master this many seconds after locust starts")
    p.add_argument("--lockd", required=True, metavar="CMD",
                   help="the lockd command; --backend redis+cluster://... is added")
    a, storm_args = p.parse_known_args(argv)
    server_cpus = run.parse_args(["--url", "x", *storm_args]).server_cpus
    with tempfile.TemporaryDirectory(prefix="storm-cluster-") as tmp:
        cluster = RedisClusterServer(Path(tmp)).start()
        try:
            for node in cluster.nodes:
                pin(node.proc.pid, server_cpus)
            before = cluster.masters_now()
            victim = before[0]
            print(f"failover: cluster {cluster.url}; will kill master 127.0.0.1:{victim.port} "
                  f"(pid {victim.proc.pid}) at {a.kill_at:g}s", file=sys.stderr, flush=True)
            status = run.main([*storm_args, "--lockd", f"{a.lockd} --backend {cluster.url}",
                               "--at", str(a.kill_at), "--run", f"kill -9 {victim.proc.pid}"])
            try:
                cluster.wait_ok(30, linked=False)
            except TimeoutError as exc:
                print(f"failover: the cluster did not recover: {exc}", file=sys.stderr)
                return 6
            masters = {n.port for n in cluster.masters_now()}
            promoted = sorted(masters - {n.port for n in before})
            whole = victim.proc.proc.poll() is not None and len(promoted) == 1
            print(f"failover: killed master {victim.port}, promoted {promoted}, masters now "
                  f"{sorted(masters)}: {'failed over' if whole else 'NOT failed over'}",
                  flush=True)
            if not whole:
                return 6
            return status
        finally:
            cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
