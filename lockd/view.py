"""A view of the groups a process serves, kept up to date from the store's change feed.

A refusal ("full", "paused", outside the window, cooling down, a gate closed) is safe to
give from a slightly old value: the node asks again. So the service answers a refusal from
this view without a store round trip, and decides everything that may answer 200 on the
store's current value (:mod:`lockd.service`). The view is filled by the service's own reads
and writes and emptied, key by key, by the feed (:meth:`lockd.backends.Backend.watch`).

An entry may answer a refusal only when every trust rule holds, each a function below:

- :func:`feed_connected`: the feed is connected now;
- :func:`filled_after_subscribe`: the entry was filled after the feed was (re)subscribed,
  so every change since its read has been or will be reported;
- :func:`raced_a_change`: no change of its key was reported while the read that filled it
  was under way (that read may have seen the value before or after the change);
- :func:`young_enough`: its read started less than ``max_age`` seconds ago, so a lost
  notification cannot refuse a node for longer than that (a freed slot is granted at the
  latest ``max_age`` later).

On any feed error or reconnect the whole view is forgotten and filled again by reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockd.backends import Backend, BackendUnavailable, Version

log = logging.getLogger("lockd.view")

#: Default ``storage.view_max_age_s``.
DEFAULT_MAX_AGE = 1.0


@dataclass(frozen=True, slots=True)
class Token:
    """Taken just before a read or write: when it started, and what the feed had said."""

    epoch: int
    seq: int
    started: float


@dataclass(slots=True)
class Entry:
    raw: bytes | None
    version: Version
    epoch: int
    filled: float  # when the read that filled it started
    #: The decoded value, cached by the service (decoding is the dearest part of a hit).
    decoded: Any = None
    #: (policy, outcome): the refusal every non-holder gets on this value, kept by the
    #: service (lockd.service.verdict_keeps); gone with the entry when its key changes.
    verdict: Any = None


# The trust rules.


def feed_connected(connected: bool) -> bool:
    """An entry answers nothing while the feed is down: a change would go unseen."""
    return connected


def filled_after_subscribe(entry_epoch: int, epoch: int) -> bool:
    """Only entries filled under the current subscription: a change made before it (while
    the feed was down or connecting) may never be reported."""
    return entry_epoch == epoch


def raced_a_change(
    token_seq: int, change_seq: int, change_version: Version, read_version: Version
) -> bool:
    """Whether a change of the key was reported after the read started (``change_seq`` >
    ``token_seq``): the read may have seen the value before it. A change whose reported
    version is exactly the one read is the read's own value, not a race."""
    if change_seq <= token_seq:
        return False
    return change_version is None or change_version != read_version


def young_enough(filled: float, now: float, max_age: float) -> bool:
    """Bounded staleness: a lost notification refuses for at most ``max_age`` seconds. An
    entry from the future (a clock stepped back) is not young: it could otherwise refuse
    for as long as the step."""
    return 0 <= now - filled < max_age


class View:
    """Entries per key, trusted by the rules above; also the feed's sink
    (:class:`lockd.backends.ChangeSink`)."""

    def __init__(
        self,
        max_age: float = DEFAULT_MAX_AGE,
        *,
        remember: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.remember = remember
        self.clock = clock
        self.connected = False
        self.epoch = 0
        self.seq = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        # The last reported change per key (seq, version), bounded; a key forgotten here
        # counts as changed at ``_floor`` (conservative: its reads may be refused).
        self._changes: OrderedDict[str, tuple[int, Version]] = OrderedDict()
        self._floor = 0
        #: Counted by the service for lockd_view_* metrics: refusals given from the view,
        #: pre-reboots it could not answer.
        self.hits = 0
        self.misses = 0
        self.resyncs = 0

    # The feed's side (ChangeSink)

    def subscribed(self) -> None:
        self.connected = True
        self.resyncs += 1
        self._restart()

    def changed(self, key: str | None, version: Version = None) -> None:
        self.seq += 1
        if key is None:  # anything may have changed
            self._floor = self.seq
            self._changes.clear()
            self._entries.clear()
            return
        self._changes[key] = (self.seq, version)
        self._changes.move_to_end(key)
        if len(self._changes) > self.remember:
            self._changes.popitem(last=False)
            self._floor = self.seq
        entry = self._entries.get(key)
        if entry is not None and (version is None or entry.version != version):
            del self._entries[key]

    def lost(self) -> None:
        """The feed broke: nothing is trusted until it is back and entries are read again."""
        self.connected = False
        self._restart()

    def _restart(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._changes.clear()
        self._floor = self.seq

    # The service's side

    def token(self) -> Token:
        return Token(self.epoch, self.seq, self.clock())

    def fill(self, key: str, raw: bytes | None, version: Version, token: Token) -> None:
        """Remember what a read or write that started at ``token`` found, if the rules let
        it answer later; otherwise forget the key."""
        change_seq, change_version = self._changes.get(key, (self._floor, None))
        if (
            not feed_connected(self.connected)
            or not filled_after_subscribe(token.epoch, self.epoch)
            or raced_a_change(token.seq, change_seq, change_version, version)
        ):
            self._entries.pop(key, None)
            return
        self._entries[key] = Entry(raw, version, token.epoch, token.started)
        self._entries.move_to_end(key)
        if len(self._entries) > self.remember:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def lookup(self, key: str) -> Entry | None:
        """The key's entry if it may answer a refusal now, else None."""
        entry = self._entries.get(key)
        if (
            entry is None
            or not feed_connected(self.connected)
            or not filled_after_subscribe(entry.epoch, self.epoch)
            or not young_enough(entry.filled, self.clock(), self.max_age)
        ):
            return None
        return entry


async def follow(backend: Backend, prefix: str, view: View, *, pause: float = 0.1,
                 pause_cap: float = 2.0) -> None:
    """Keep ``view`` on ``backend``'s change feed until cancelled, watching again (with a
    growing, jittered pause) after every failure; the view is untrusted in between."""
    failures = 0
    while True:
        try:
            await backend.watch(prefix, view)
            reason = "the change feed ended"
        except BackendUnavailable as exc:
            reason = str(exc)
        except Exception as exc:  # a bug in a feed must not end the process
            log.exception("change feed failed")
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            was_connected = view.connected
            view.lost()
        if was_connected or failures == 0:
            log.warning("change feed lost, refusals read the store until it is back: %s",
                        reason)
            failures = 0
        failures += 1
        await asyncio.sleep(random.uniform(0.5, 1.0) * min(pause_cap, pause * 2**failures))
