"""The raw etcd v3 compare-and-set rate: the ceiling for lockd on etcd.

Each of ``--connections`` workers owns one key and loops on the single transaction lockd
sends for a grant or a release: compare the key's mod_revision and value, put a new value
(alternating between an empty group and a group of one holder, like a grant+release
cycle), read the key if the compare lost, learn the new revision from the response header.
No lockd, no decisions: what the store and the client alone can do at that concurrency
(on the standard asyncio loop, as before lockd used the gateway).

``--client gateway`` (the default) sends it the way lockd does: JSON to etcd's gateway
(``POST /v3/kv/txn``) with a bare aiohttp session, one connection per worker.
``--client aetcd`` sends the same transaction over gRPC with the ``aetcd`` library (which
lockd no longer uses; install it in a scratch venv to compare the two paths).

    python -m bench.raw_etcd 127.0.0.1:2379 --duration 4 --connections 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from typing import Any

# A native-layout group, empty and with one zincati node, as lockd writes them.
VALUES = (
    b'{"slots":1,"config_slots":1,"paused":false,"next_grant_id":2,"holders":[]}',
    b'{"slots":1,"config_slots":1,"paused":false,"next_grant_id":2,"holders":[{"id":'
    b'"0123456789abcdef0123456789abcdef","granted_at":1764583200.123,"grant_id":1}]}',
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def measure_gateway(endpoint: str, seconds: float, connections: int) -> dict[str, Any]:
    import aiohttp

    url = f"http://{endpoint}/v3/kv/txn"
    done = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def txn(body: dict[str, Any]) -> dict[str, Any]:
            data = json.dumps(body, separators=(",", ":")).encode()
            async with session.post(url, data=data, headers=headers) as resp:
                doc = json.loads(await resp.read())
                if resp.status != 200:
                    raise RuntimeError(f"etcd answered {resp.status}: {doc}")
                return doc

        async def worker(n: int) -> None:
            nonlocal done
            key = _b64(f"bench/raw/{n}-{time.time_ns()}".encode())
            value = VALUES[0]
            doc = await txn({
                "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": _b64(value)}}],
            })
            revision = int(doc["header"]["revision"])
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                new = VALUES[value == VALUES[0]]  # the other one
                doc = await txn({
                    "compare": [
                        {"key": key, "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(revision)},
                        {"key": key, "target": "VALUE", "result": "EQUAL", "value": _b64(value)},
                    ],
                    "success": [{"request_put": {"key": key, "value": _b64(new)}}],
                    "failure": [{"request_range": {"key": key}}],
                })
                if not doc.get("succeeded"):
                    raise RuntimeError("a raw compare-and-set lost: keys are not private")
                revision, value = int(doc["header"]["revision"]), new
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        elapsed = time.monotonic() - started
    return {"client": "gateway", "rps": done / elapsed, "requests": done}


async def measure_aetcd(endpoint: str, seconds: float, connections: int) -> dict[str, Any]:
    # aetcd's public transaction() drops the response header (the new revision), so this
    # builds the request as lockd's aetcd backend used to: with aetcd's internals.
    import aetcd
    from aetcd import rpc

    host, _, port = endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    t = client.transactions
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        key = f"bench/raw/{n}-{time.time_ns()}".encode()
        value = VALUES[0]
        put = await client.put(key, value)
        revision = put.header.revision if put is not None else 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            new = VALUES[value == VALUES[0]]  # the other one
            request = rpc.TxnRequest(
                compare=[(t.mod(key) == revision).build_message(),
                         (t.value(key) == value).build_message()],
                success=client._ops_to_requests([t.put(key, new)]),
                failure=client._ops_to_requests([t.get(key)]),
            )
            response = await client.kvstub.Txn(request, metadata=client.metadata)
            if not response.succeeded:
                raise RuntimeError("a raw compare-and-set lost: keys are not private")
            revision, value = response.header.revision, new
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.monotonic() - started
    await client.close()
    return {"client": "aetcd", "rps": done / elapsed, "requests": done}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("endpoint", help="HOST:PORT of an etcd member")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--client", choices=("gateway", "aetcd"), default="gateway",
                   help="JSON gateway over aiohttp (lockd's path) or gRPC through aetcd")
    a = p.parse_args()
    measure = measure_gateway if a.client == "gateway" else measure_aetcd
    print(json.dumps(asyncio.run(measure(a.endpoint, a.duration, a.connections))))


if __name__ == "__main__":
    main()
