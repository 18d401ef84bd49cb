"""The native layout's document of a group with lock.history's 20 reboots (after 30
grant+release cycles): encode and decode with the stdlib json and with orjson, and the
layout's own encode and decode, in microseconds per call (medians of 5 x 20,000).

    taskset -c 0 .venv/bin/python -m bench.native_codec
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import orjson

from lockd import policy
from lockd.layouts import NativeLayout
from lockd.policy import GroupPolicy
from lockd.semaphore import Semaphore


def main() -> None:
    p = GroupPolicy(history=20)
    s, t = Semaphore.new(1), time.time()
    for i in range(30):
        s, _ = policy.lock(s, "cycler3", t + i, p)
        s, _ = policy.unlock(s, "cycler3", t + i + 0.5, p)
    s, _ = policy.lock(s, "cycler3", t + 99, p)
    layout = NativeLayout()
    raw = layout.encode(s, None)
    doc = json.loads(raw)
    cases: dict[str, Callable[[], object]] = {
        'json.dumps(doc, separators=(",", ":"))': lambda: json.dumps(
            doc, separators=(",", ":")).encode(),
        "orjson.dumps(doc)": lambda: orjson.dumps(doc),
        "json.loads(raw)": lambda: json.loads(raw),
        "orjson.loads(raw)": lambda: orjson.loads(raw),
        "NativeLayout.encode": lambda: layout.encode(s, raw),
        "NativeLayout.decode": lambda: layout.decode(raw),
    }
    print(f"document: {len(raw)} bytes")
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(5):
        for name, call in cases.items():
            started = time.perf_counter()
            for _ in range(20000):
                call()
            times[name].append(1e6 * (time.perf_counter() - started) / 20000)
    for name, values in times.items():
        print(f"{name:<40} {statistics.median(values):6.1f} us")


if __name__ == "__main__":
    main()
