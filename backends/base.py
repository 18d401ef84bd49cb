"""The backend contract: a versioned key-value store with compare-and-set.

A backend never decides who gets a slot and knows nothing of semaphores: it stores bytes
under a key with a version and swaps them atomically. What the bytes mean (the layouts) and
the one retry loop live in ``lockd``; this package imports nothing from it.

Versions are opaque to the caller: whatever ``get`` returned is what ``compare_and_set``
expects. ``None`` means "the key does not exist", so ``compare_and_set(key, v, None)``
creates the key only if it is still absent. A key's versions never repeat, not even after
the store is rolled back (a failover, a restored backup), so a version remembered for a
long time can only make a compare-and-set fail, never succeed on a value it did not see.

A key can also be deleted, conditionally: ``compare_and_delete(key, expected)`` removes it
only while its version is still ``expected`` (public mode's garbage collection deletes an
idle group only as it read it, so a grant made meanwhile always survives). Deleting does
not reset versions: a key created again never shows a version it had before the delete.

The whole contract, each method with a caller in ``lockd`` and a test in
``tests/test_backend_contract.py``: ``get``, ``compare_and_set``, ``compare_and_delete``,
``scan``, ``ping``, ``open``, ``close``, ``describe``; and, optional, ``watch`` (a change
feed, where ``has_feed`` is true).
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple, Protocol

Version = Any

#: The key ``ping`` reads by default; it need not exist.
PING_KEY = "lockd/ping"


def prefix_end(prefix: bytes) -> bytes | None:
    """The least key after every key that starts with ``prefix`` (for a range read);
    None when there is none (``prefix`` is empty or all ``0xFF``)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return None


class BackendError(Exception):
    """Base class for errors a backend raises."""


class InvalidBackendURL(BackendError, ValueError):
    """The URL names no backend, or a backend cannot use it. The message says why."""


class MissingDriver(InvalidBackendURL):
    """The URL's backend needs a driver that is not installed; the message names the extra."""


class BackendUnavailable(BackendError):
    """The store cannot be reached or did not answer in time.

    The caller must not assume a write it sent was refused: a distributed store may
    still commit it (etcd, once quorum returns). Clients see 503 and retry, and a retry
    finds the outcome (a re-lock by the holder is 200).
    """


class ValueTooLarge(BackendError):
    """The store refuses a value of this size (etcd's request limit, for one)."""


class CasResult(NamedTuple):
    """What a compare-and-set did, and the key's state afterwards.

    ``stored``: whether ``value`` was written. Then ``value``/``version`` are the written
    value and its new version; otherwise they are the key's current value and version
    (``None, None`` if it is absent). ``version`` may be None after a write, meaning "not
    known": the caller then reads before trusting its copy.
    """

    stored: bool
    value: bytes | None
    version: Version


class ChangeSink(Protocol):
    """What :meth:`Backend.watch` reports to."""

    def subscribed(self) -> None:
        """The feed is in place: every change made from now on will be reported (or the
        watch will raise)."""

    def changed(self, key: str | None, version: Version = None) -> None:
        """``key`` changed; ``version`` is its new version if the feed knows it (None if
        not, or if the key was deleted). ``key`` None: anything may have changed."""


class Backend(abc.ABC):
    """A store with atomic compare-and-set on one key."""

    #: URL scheme this backend serves, for messages.
    scheme: str = ""
    #: Whether :meth:`watch` is implemented (the optional change feed).
    has_feed: bool = False

    @abc.abstractmethod
    async def get(self, key: str) -> tuple[bytes | None, Version]:
        """Return ``(value, version)``, or ``(None, None)`` when the key is absent."""

    @abc.abstractmethod
    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        """Store ``value`` if the key's version is still ``expected``; see :class:`CasResult`.

        One round trip where the store allows it: a lost race answers the current value, so
        the caller can decide again without a read.
        """

    @abc.abstractmethod
    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        """Delete the key if its version is still ``expected`` (a version ``get`` or a
        write answered; never None).

        Deleted: ``CasResult(True, None, None)``. Otherwise nothing changes and the result
        is the key's current value and version, as for a lost :meth:`compare_and_set`
        (``False, None, None`` if it is absent).
        """

    @abc.abstractmethod
    async def scan(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted."""

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless the store answers."""
        await self.get(PING_KEY)

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (optional): called once before first use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend is not used afterwards."""

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        """Optional (where :attr:`has_feed`): follow the store's own change feed.

        Calls ``sink.subscribed()`` once the feed is in place, then ``sink.changed(key,
        version)`` for every change of a key starting with ``prefix`` made after that, in
        the store's order, including this process's own writes. Runs until cancelled; when
        the feed breaks (or may have missed a change) it raises
        :class:`BackendUnavailable`, and the caller watches again after a pause.
        """
        raise NotImplementedError(f"{self.scheme}:// has no change feed")

    def describe(self) -> str:
        """A human-readable location without secrets, for logs and start-up messages."""
        return self.scheme
