"""A layout names keys and encodes a :class:`~lockd.semaphore.Semaphore` to bytes."""

from __future__ import annotations

import abc

from lockd.semaphore import Semaphore


class LayoutError(Exception):
    """A stored value cannot be decoded in this layout."""


class Layout(abc.ABC):
    name: str = ""
    #: True where the store, not lockd's configuration, owns the number of slots
    #: (locksmith: ``locksmithctl set-max`` writes it). Configuration then only seeds
    #: new groups.
    store_owns_slots: bool = False
    #: True where the reboot policy's shared state (last releases, history, stale reports;
    #: lockd.policystate) survives in the stored value. Only lockd's own document does:
    #: airlock and locksmith drop what they do not know when they write.
    stores_policy_state: bool = False
    #: True where ``decode(encode(sem, previous)) == sem`` for every semaphore lockd
    #: writes, so that the service may keep what it wrote instead of decoding it again
    #: (lockd.service). Not airlock's or locksmith's: they drop lockd's fields.
    lossless: bool = False

    @abc.abstractmethod
    def key(self, group: str) -> str:
        """The key holding ``group``'s semaphore."""

    @abc.abstractmethod
    def group_prefix(self) -> str:
        """The common prefix of every group's key, for listing groups."""

    @abc.abstractmethod
    def group_of(self, key: str) -> str | None:
        """The group a key belongs to, or None if the key is not a group's semaphore."""

    @abc.abstractmethod
    def decode(self, raw: bytes) -> Semaphore:
        """Decode a stored value; raise :class:`LayoutError` if it is not one."""

    @abc.abstractmethod
    def encode(self, sem: Semaphore, previous: bytes | None) -> bytes:
        """Encode ``sem``; ``previous`` is the value it replaces, to keep foreign fields."""
