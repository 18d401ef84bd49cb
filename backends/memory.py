"""``memory://``: a volatile store in this process, for tests and throwaway runs."""

from __future__ import annotations

from backends.base import Backend, Version


class MemoryBackend(Backend):
    scheme = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, tuple[bytes, int]] = {}
        self._counter = 0

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        entry = self._data.get(key)
        return (None, None) if entry is None else entry

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> bool:
        return (await self.swap(key, value, expected))[0]

    async def swap(
        self, key: str, value: bytes, expected: Version
    ) -> tuple[bool, bytes | None, Version]:
        # No await between the check and the write: atomic on the event loop.
        entry = self._data.get(key)
        current = None if entry is None else entry[1]
        if current != expected:
            return (False, None, None) if entry is None else (False, *entry)
        self._counter += 1
        self._data[key] = (value, self._counter)
        return True, value, self._counter

    async def delete(self, key: str, expected: Version) -> bool:
        entry = self._data.get(key)
        if entry is None or entry[1] != expected:
            return False
        del self._data[key]
        return True

    async def scan(self, prefix: str) -> list[str]:
        return sorted(k for k in self._data if k.startswith(prefix))

    def describe(self) -> str:
        return "memory:// (volatile: holders are forgotten when lockd stops)"


def from_url(url: str) -> MemoryBackend:
    return MemoryBackend()
