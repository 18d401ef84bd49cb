"""What one hit of an in-process limit storage costs as the number of limited keys grows,
with the event loop running between hits as in a server: the `limits` package's async
memory storage, and lockd's own (lockd.ratelimit.LocalStorage).

    .venv/bin/python -m bench.limits_memory
"""

import asyncio
import time

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from lockd.ratelimit import LocalStorage


async def main() -> None:
    item = parse("3000/minute")
    for kind, n in [(k, n) for k in (MemoryStorage, LocalStorage) for n in (1, 10_000, 100_000)]:
        storage = kind()
        limiter = SlidingWindowCounterRateLimiter(storage)
        for i in range(n):
            await limiter.hit(item, f"t{i}")
        await asyncio.sleep(0.05)
        started, hits = time.perf_counter(), 2000
        for i in range(hits):
            await limiter.hit(item, f"t{i % n}")
            await asyncio.sleep(0)  # the loop runs the storage's expiry task, as in lockd
        per_hit = (time.perf_counter() - started) / hits * 1e6
        print(f"{kind.__name__:<13} {n:>7} keys: {per_hit:,.1f} us per hit")


if __name__ == "__main__":
    asyncio.run(main())
