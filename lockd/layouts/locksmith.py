"""locksmith's layout (etcd v2 keys API): one semaphore shared with locksmithd nodes.

Keys, exactly as flatcar/locksmith names them (no leading slash; the etcd2 backend adds its
root and the ``/v2/keys`` prefix)::

    FleetLock group "default" -> locksmith group ""  -> coreos.com/updateengine/rebootlock/semaphore
    FleetLock group G                                -> coreos.com/updateengine/rebootlock/groups/
                                                        <QueryEscape(G)>/semaphore

Value: ``{"semaphore":N,"max":M,"holders":[sorted ids]}``. ``semaphore`` is locksmith's own
counter of free slots, kept beside ``max`` rather than derived from it: lock decrements it,
unlock increments it, ``set-max`` moves it by new-old, and it may go negative. The model keeps
it in :attr:`Semaphore.free_counter` and moves it exactly as locksmith would, so that
``locksmithctl status`` shows the truth whichever kind of node wrote last.

The store's ``max`` is authoritative (``store_owns_slots``): lockd's configured slots only seed
a group that does not exist yet, because ``locksmithctl set-max`` writes ``max`` directly.

What locksmith cannot store (when each holder was granted, lockd's grant ids, a pause) goes in
one extra object ``"lockd"`` beside locksmith's fields. Go's ``encoding/json`` ignores it when
locksmith reads and drops it when locksmith writes, so after a locksmith write those details
are gone: holders read back with ``granted_at == 0.0`` and ``grant_id == 0`` ("unknown"), and a
pause set through lockd is lifted. Nothing about who holds a slot is ever lost, because the
holders list is locksmith's own field.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from lockd.layouts.base import Layout, LayoutError
from lockd.semaphore import Holder, Semaphore

PREFIX = "coreos.com/updateengine/rebootlock/"
DEFAULT_KEY = PREFIX + "semaphore"
GROUPS = PREFIX + "groups/"
SUFFIX = "/semaphore"
#: The FleetLock group that stands for locksmith's default group "".
DEFAULT_GROUP = "default"
#: Where lockd keeps what locksmith's format has no field for.
EXTRA = "lockd"


def locksmith_group(group: str) -> str:
    """The locksmith group name a FleetLock group maps to."""
    return "" if group == DEFAULT_GROUP else group


def _int(doc: dict[str, Any], name: str) -> int:
    # Go decodes a missing field as 0 and refuses anything but a whole number.
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(f"locksmith field {name!r} is not a whole number: {value!r}")
    return value


class LocksmithLayout(Layout):
    name = "locksmith"
    store_owns_slots = True

    def key(self, group: str) -> str:
        name = locksmith_group(group)
        if not name:
            return DEFAULT_KEY
        return GROUPS + quote_plus(name) + SUFFIX

    def group_prefix(self) -> str:
        return PREFIX

    def group_of(self, key: str) -> str | None:
        key = key.lstrip("/")
        if key == DEFAULT_KEY:
            return DEFAULT_GROUP
        if not (key.startswith(GROUPS) and key.endswith(SUFFIX)):
            return None
        escaped = key[len(GROUPS) : -len(SUFFIX)]
        if not escaped or "/" in escaped:
            return None
        name = unquote_plus(escaped)
        # A locksmith group literally named "default" cannot be reached from FleetLock:
        # FleetLock's "default" is locksmith's "". Listing it would show the wrong semaphore.
        if name == DEFAULT_GROUP:
            return None
        return name

    def decode(self, raw: bytes) -> Semaphore:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise LayoutError(f"not a locksmith semaphore: {exc}") from exc
        if not isinstance(doc, dict):
            raise LayoutError("not a locksmith semaphore: not a JSON object")
        counter = _int(doc, "semaphore")
        slots = _int(doc, "max")
        ids = doc.get("holders")
        if ids is None:  # locksmith's first write has "holders": null
            ids = []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise LayoutError(f"locksmith field 'holders' is not a list of ids: {ids!r}")
        extra = doc.get(EXTRA)
        if not isinstance(extra, dict):
            extra = {}
        grants = extra.get("grants")
        if not isinstance(grants, dict):
            grants = {}
        holders: list[Holder] = []
        seen: set[str] = set()
        for id in ids:
            if id in seen:  # a hand-edited list; one slot per id is what locksmith means
                continue
            seen.add(id)
            holders.append(Holder(id=id, **_grant(grants.get(id))))
        next_grant_id = extra.get("next_grant_id")
        if isinstance(next_grant_id, bool) or not isinstance(next_grant_id, int):
            next_grant_id = 1
        # Grant ids stay unique even when the extra object was dropped and rebuilt.
        next_grant_id = max([next_grant_id, *(h.grant_id + 1 for h in holders)])
        return Semaphore(
            slots=slots,
            holders=tuple(holders),
            next_grant_id=next_grant_id,
            config_slots=None,
            paused=extra.get("paused") is True,
            free_counter=counter,
        )

    def encode(self, sem: Semaphore, previous: bytes | None) -> bytes:
        doc: dict[str, Any] = {}
        if previous is not None:
            try:
                old = json.loads(previous)
            except ValueError:
                old = None
            if isinstance(old, dict):
                doc.update(old)  # keep fields that neither locksmith nor lockd knows
        # A group lockd creates has no counter yet: start it where locksmith's would be.
        counter = sem.free_counter
        if counter is None:
            counter = sem.slots - len(sem.holders)
        holders = sorted(h.id for h in sem.holders)  # locksmith binary-searches this list
        doc["semaphore"] = counter
        doc["max"] = sem.slots
        # An untouched null stays null, as locksmith would leave it.
        doc["holders"] = holders if holders or doc.get("holders") is not None else None
        grants = {
            h.id: {"granted_at": h.granted_at, "grant_id": h.grant_id}
            for h in sem.holders
            if h.grant_id > 0
        }
        extra: dict[str, Any] = {"next_grant_id": sem.next_grant_id}
        if grants:
            extra["grants"] = grants
        if sem.paused:
            extra["paused"] = True
        doc[EXTRA] = extra
        # locksmith's own fields first, in its order, so a human reading etcdctl sees them.
        ordered = {k: doc.pop(k) for k in ("semaphore", "max", "holders")}
        ordered.update(doc)
        return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


def _grant(entry: Any) -> dict[str, Any]:
    """A holder's grant details from the extra object, or "unknown" (0) for each."""
    if isinstance(entry, dict):
        at, gid = entry.get("granted_at"), entry.get("grant_id")
        if (
            isinstance(at, int | float)
            and not isinstance(at, bool)
            and isinstance(gid, int)
            and not isinstance(gid, bool)
        ):
            return {"granted_at": float(at), "grant_id": gid}
    return {"granted_at": 0.0, "grant_id": 0}
