"""``memory://``: a volatile store in this process, for tests and throwaway runs."""

from __future__ import annotations

import asyncio

from .base import Backend, CasResult, ChangeSink, Version


class MemoryBackend(Backend):
    scheme = "memory"
    has_feed = True

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._counter = 0
        # The change feed: (prefix, sink) of each watch, told of each write as it happens.
        self._watchers: list[tuple[str, ChangeSink]] = []

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        entry = self._data.get(key)
        return (None, None) if entry is None else entry

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        # No await between the check and the write: atomic on the event loop. The counter
        # never repeats within the process, and nothing outlives the process.
        entry = self._data.get(key)
        current = None if entry is None else entry[1]
        if current != expected:
            return CasResult(False, None, None) if entry is None else CasResult(False, *entry)
        self._counter += 1
        self._data[key] = (value, self._counter)
        for prefix, sink in self._watchers:
            if key.startswith(prefix):
                sink.changed(key, self._counter)
        return CasResult(True, value, self._counter)

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        if expected is None:
            raise ValueError("compare_and_delete needs the version of the value to delete")
        entry = self._data.get(key)
        if entry is None or entry[1] != expected:
            return CasResult(False, None, None) if entry is None else CasResult(False, *entry)
        del self._data[key]
        for prefix, sink in self._watchers:
            if key.startswith(prefix):
                sink.changed(key, None)
        return CasResult(True, None, None)

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        watcher = (prefix, sink)
        self._watchers.append(watcher)
        try:
            sink.subscribed()
            await asyncio.Event().wait()  # until cancelled: this feed cannot break
        finally:
            self._watchers.remove(watcher)

    async def scan(self, prefix: str) -> list[str]:
        return sorted(k for k in self._data if k.startswith(prefix))

    def describe(self) -> str:
        return "memory:// (volatile: holders are forgotten when lockd stops)"


def from_url(url: str) -> MemoryBackend:
    from . import InvalidBackendURL

    if url.rstrip("/") != "memory:":
        raise InvalidBackendURL(f"memory URL {url!r}: takes no host, path or options")
    return MemoryBackend()
