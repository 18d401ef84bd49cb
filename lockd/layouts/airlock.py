"""airlock's layout on etcd v3, so lockd can take over a running airlock's keyspace.

airlock (coreos/airlock) keeps one key per group,
``com.coreos.airlock/groups/<QueryEscape(group)>/v1/semaphore``, holding Go's
``json.Marshal`` of ``{"total_slots": N, "holders": [sorted ids]}``. airlock looks holders
up with ``sort.SearchStrings``, so the list must stay sorted (byte order; Python's code point
order is the same for UTF-8), or airlock would miss a holder and grant it a second slot.

airlock knows nothing of grant times, grant ids, pause or the configured slots. lockd keeps
those in one extra member, ``"lockd"``, that Go's ``encoding/json`` ignores on read. airlock
drops it on its next write, so every lockd-only field has a stand-in for when it is missing:

- a holder without lockd metadata (granted by airlock) reads as ``granted_at=0`` (unknown,
  shown as "since the epoch") and ``grant_id=0``;
- ``next_grant_id`` becomes one more than the largest grant id still known;
- ``paused`` reads as False: airlock never honoured a pause anyway;
- ``config_slots`` reads as the stored ``total_slots``: the slots airlock enforces are taken
  as "the configuration last applied". lockd then applies its own configured slots once if
  they differ (the fix for airlock#81), and writes nothing when they agree. A run-time
  ``set-slots`` therefore lasts until airlock next writes the key; stop airlock first.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from lockd.layouts.base import Layout, LayoutError
from lockd.semaphore import Holder, Semaphore

ROOT = "com.coreos.airlock/groups/"
SUFFIX = "/v1/semaphore"
#: The extra JSON member that carries lockd's own fields; airlock ignores and drops it.
EXTRA = "lockd"


class AirlockLayout(Layout):
    name = "airlock"

    prefix = ROOT

    def key(self, group: str) -> str:
        # Go's url.QueryEscape is quote_plus; FleetLock group names never need escaping,
        # but airlock's own group names (from its config) might.
        return f"{self.prefix}{quote_plus(group)}{SUFFIX}"

    def group_prefix(self) -> str:
        return self.prefix

    def group_of(self, key: str) -> str | None:
        if not (key.startswith(self.prefix) and key.endswith(SUFFIX)):
            return None
        escaped = key[len(self.prefix) : -len(SUFFIX)]
        if not escaped or "/" in escaped:
            return None
        return unquote_plus(escaped)

    def decode(self, raw: bytes) -> Semaphore:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            slots = doc["total_slots"]
            if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
                raise TypeError(f"total_slots {slots!r} is not a whole number")
            # airlock unmarshals null into a nil slice and treats it as empty.
            ids = doc.get("holders") or []
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise TypeError("holders is not a list of strings")
            extra = doc.get(EXTRA)
            extra = extra if isinstance(extra, dict) else {}
            grants: dict[str, Any] = extra.get("grants") or {}
            holders = []
            for id_ in dict.fromkeys(ids):  # a duplicate id would count twice; keep one
                meta = grants.get(id_) or {}
                holders.append(
                    Holder(
                        id=id_,
                        granted_at=float(meta.get("granted_at", 0.0)),
                        grant_id=int(meta.get("grant_id", 0)),
                    )
                )
            # Holders are kept in grant order, as the native layout keeps them.
            holders.sort(key=lambda h: (h.grant_id, h.id))
            known = max((h.grant_id for h in holders), default=0)
            next_grant_id = max(int(extra.get("next_grant_id", 1)), known + 1)
            # None: no lockd configuration is recorded (airlock wrote the key last).
            config_slots = extra.get("config_slots")
            return Semaphore(
                slots=slots,
                holders=tuple(holders),
                next_grant_id=next_grant_id,
                config_slots=None if config_slots is None else int(config_slots),
                paused=bool(extra.get("paused", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LayoutError(f"not an airlock semaphore: {exc}") from exc

    def encode(self, sem: Semaphore, previous: bytes | None) -> bytes:
        doc: dict[str, Any] = {}
        if previous is not None:
            # Keep members some other writer added (a future airlock field), as Go would not.
            try:
                old = json.loads(previous)
                if isinstance(old, dict):
                    doc.update(old)
            except ValueError:
                pass
        doc["total_slots"] = sem.slots
        doc["holders"] = sorted(h.id for h in sem.holders)
        doc[EXTRA] = {
            "config_slots": sem.config_slots,
            "paused": sem.paused,
            "next_grant_id": sem.next_grant_id,
            "grants": {
                h.id: {"granted_at": h.granted_at, "grant_id": h.grant_id} for h in sem.holders
            },
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
