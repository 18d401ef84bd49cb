"""lockd's own layout: one JSON document per group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from lockd.layouts.base import Layout, LayoutError
from lockd.policy import DEFAULT_HISTORY
from lockd.policystate import PolicyState, Reboot
from lockd.semaphore import Holder, Semaphore

PREFIX = "lockd/v1/groups/"
#: Policy states whose JSON a layout keeps (see NativeLayout._policy_fragment).
POLICIES_KEPT = 1024
#: Reboots whose JSON a layout keeps (NativeLayout._reboot_fragment): the default history
#: for as many groups as POLICIES_KEPT.
REBOOTS_KEPT = DEFAULT_HISTORY * POLICIES_KEPT


class NativeLayout(Layout):
    name = "native"
    stores_policy_state = True
    lossless = True  # every field of a Semaphore but locksmith's free_counter (None here)

    prefix = PREFIX

    def key(self, group: str) -> str:
        # Group names match ^[a-zA-Z0-9.-]+$, so they are safe in a key as they are.
        return self.prefix + group

    def group_prefix(self) -> str:
        return self.prefix

    def group_of(self, key: str) -> str | None:
        if key.startswith(self.prefix) and len(key) > len(self.prefix):
            return key[len(self.prefix) :]
        return None

    def decode(self, raw: bytes) -> Semaphore:
        try:
            doc = orjson.loads(raw)
            holders = tuple(
                Holder(
                    id=str(h["id"]), granted_at=float(h["granted_at"]), grant_id=int(h["grant_id"])
                )
                for h in doc["holders"]
            )
            config_slots = doc.get("config_slots")
            return Semaphore(
                slots=int(doc["slots"]),
                holders=holders,
                next_grant_id=int(doc["next_grant_id"]),
                config_slots=None if config_slots is None else int(config_slots),
                paused=bool(doc.get("paused", False)),
                policy=_decode_policy(doc.get("policy")),
                touched=None if doc.get("touched") is None else float(doc["touched"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LayoutError(f"not a lockd semaphore document: {exc}") from exc

    def __init__(self) -> None:
        # id(state) -> (state, its JSON): a group's policy state (its reboot history, a
        # dict per reboot) changes at a release only, so a grant, and every write with a
        # release, would encode the same history again: about 7 us with 20 reboots
        # (issue #15). Keyed by identity, holding the state so that its id stays its own.
        self._policies: dict[int, tuple[PolicyState, orjson.Fragment]] = {}
        # id(reboot) -> (reboot, its JSON): a release's new state shares all but one of
        # its reboots with the state before it, so each reboot is encoded once, not at
        # every release after it (issue #15). Holding the reboot, so that its id stays its
        # own while its JSON is kept.
        self._reboots: dict[int, tuple[Reboot, orjson.Fragment]] = {}

    def _policy_fragment(self, p: PolicyState) -> orjson.Fragment:
        cached = self._policies.get(id(p))
        if cached is not None and cached[0] is p:
            return cached[1]
        if len(self._policies) >= POLICIES_KEPT:
            self._policies.clear()
        fragment = orjson.Fragment(orjson.dumps(_encode_policy(p, self._reboot_fragment)))
        self._policies[id(p)] = (p, fragment)
        return fragment

    def _reboot_fragment(self, r: Reboot) -> orjson.Fragment:
        cached = self._reboots.get(id(r))
        if cached is not None and cached[0] is r:
            return cached[1]
        if len(self._reboots) >= REBOOTS_KEPT:
            self._reboots.clear()
        fragment = orjson.Fragment(orjson.dumps(
            {"id": r.id, "grant_id": r.grant_id, "granted_at": r.granted_at,
             "released_at": r.released_at, "ended": r.ended}
        ))
        self._reboots[id(r)] = (r, fragment)
        return fragment

    def encode(self, sem: Semaphore, previous: bytes | None) -> bytes:
        doc: dict[str, Any] = {
            "slots": sem.slots,
            "config_slots": sem.config_slots,
            "paused": sem.paused,
            "next_grant_id": sem.next_grant_id,
            "holders": [
                {"id": h.id, "granted_at": h.granted_at, "grant_id": h.grant_id}
                for h in sem.holders
            ],
        }
        p = sem.policy
        if p.releases or p.reboots or p.stale_reported:  # not PolicyState(): none to write
            doc["policy"] = self._policy_fragment(p)
        if sem.touched is not None:
            doc["touched"] = sem.touched
        # orjson: compact like json.dumps(separators=(",", ":")), UTF-8 rather than \u
        # escapes, and every float the shortest repr that reads back exactly (tested:
        # NativeLayout.lossless).
        return orjson.dumps(doc)


# The reboot policy's shared state (lockd.policystate), written only when there is some.


def _encode_policy(
    p: PolicyState, reboot: Callable[[Reboot], orjson.Fragment]
) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if p.releases:
        doc["releases"] = list(p.releases)
    if p.reboots:
        doc["reboots"] = [reboot(r) for r in p.reboots]
    if p.stale_reported:
        doc["stale_reported"] = list(p.stale_reported)
    return doc


def _decode_policy(doc: Any) -> PolicyState:
    if not doc:
        return PolicyState()
    if not isinstance(doc, dict):
        raise TypeError("policy is not an object")
    return PolicyState(
        releases=tuple(float(t) for t in doc.get("releases", ())),
        reboots=tuple(
            Reboot(
                id=str(r["id"]), grant_id=int(r["grant_id"]), granted_at=float(r["granted_at"]),
                released_at=float(r["released_at"]), ended=str(r["ended"]),
            )
            for r in doc.get("reboots", ())
        ),
        stale_reported=tuple(int(g) for g in doc.get("stale_reported", ())),
    )
