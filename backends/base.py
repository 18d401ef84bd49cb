"""The backend contract: a versioned key-value store with compare-and-set.

A backend never decides who gets a slot; it only stores bytes under a key with a version and
swaps them atomically. All lock semantics live in :mod:`lockd.semaphore`, and the one retry
loop lives in :mod:`lockd.service`.

Versions are opaque to the caller: whatever ``get`` returned is what ``compare_and_set``
expects. ``None`` means "the key does not exist", so ``compare_and_set(key, v, None)``
creates the key only if it is still absent. A key's versions never repeat, not even
after it is deleted and created again, so a version remembered for a long time can only
make a compare-and-set fail, never succeed on a value it did not see.
"""

from __future__ import annotations

import abc
from typing import Any

from backends.layouts.base import Layout
from backends.layouts.native import NativeLayout

Version = Any


class BackendError(Exception):
    """Base class for errors a backend raises."""


class BackendUnavailable(BackendError):
    """The store cannot be reached or did not answer in time.

    The caller must not assume a write it sent was refused: a distributed store may
    still commit it (etcd, once quorum returns). Clients see 503 and retry, and a retry
    finds the outcome (a re-lock by the holder is 200).
    """


class Backend(abc.ABC):
    """A store with atomic compare-and-set on one key."""

    #: URL scheme(s) this backend serves, for messages.
    scheme: str = ""

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout: Layout = layout or NativeLayout()

    @abc.abstractmethod
    async def get(self, key: str) -> tuple[bytes | None, Version]:
        """Return ``(value, version)``, or ``(None, None)`` when the key is absent."""

    @abc.abstractmethod
    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> bool:
        """Store ``value`` if the key's version is still ``expected``; say whether it did."""

    async def swap(
        self, key: str, value: bytes, expected: Version
    ) -> tuple[bool, bytes | None, Version]:
        """``compare_and_set`` that also tells the key's state afterwards.

        Returns ``(True, value, new_version)`` if it stored ``value``, or ``(False,
        current_value, current_version)`` if the version had moved on. ``new_version`` may
        be None, meaning "not known": the caller then re-reads before trusting its copy.
        A store that can do this in one round trip overrides it; this default costs a
        read after a lost race and never guesses a version.
        """
        if await self.compare_and_set(key, value, expected):
            return True, value, None
        current, version = await self.get(key)
        return False, current, version

    @abc.abstractmethod
    async def delete(self, key: str, expected: Version) -> bool:
        """Delete the key if its version is still ``expected``; say whether it did."""

    @abc.abstractmethod
    async def scan(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted."""

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless the store answers."""
        await self.get(self.layout.ping_key)

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (optional): called once before first use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend is not used afterwards."""

    def describe(self) -> str:
        """A human-readable location without secrets, for logs and start-up messages."""
        return self.scheme
