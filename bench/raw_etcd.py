"""The raw etcd v3 compare-and-set rate through aetcd: the ceiling for lockd on etcd.

Each of ``--connections`` workers owns one key and loops on the single transaction lockd
sends for a grant or a release: compare the key's mod_revision, put a value, learn the new
revision from the response header. No HTTP, no decisions: what the store and the client
library alone can do at that concurrency.

    python -m bench.raw_etcd 127.0.0.1:2379 --duration 4 --connections 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aetcd
from aetcd import rpc


async def measure(endpoint: str, seconds: float, connections: int) -> dict[str, float]:
    host, _, port = endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    t = client.transactions
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        key = f"bench/raw/{n}-{time.time_ns()}".encode()
        put = await client.put(key, b"{}")
        revision = put.header.revision if put is not None else 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            request = rpc.TxnRequest(
                compare=[(t.mod(key) == revision).build_message()],
                success=client._ops_to_requests([t.put(key, b'{"holders":[]}')]),
                failure=client._ops_to_requests([t.get(key)]),
            )
            response = await client.kvstub.Txn(request, metadata=client.metadata)
            if not response.succeeded:
                raise RuntimeError("a raw compare-and-set lost: keys are not private")
            revision = response.header.revision
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.monotonic() - started
    await client.close()
    return {"rps": done / elapsed, "requests": done}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("endpoint", help="HOST:PORT of an etcd member")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    a = p.parse_args()
    print(json.dumps(asyncio.run(measure(a.endpoint, a.duration, a.connections))))


if __name__ == "__main__":
    main()
