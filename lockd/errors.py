"""The one bounded set of error kinds, each with its HTTP status.

zincati turns ``kind`` into a metrics label, so this set is small and fixed: handlers pick
a kind from here, never invent one.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """An error kind and the HTTP status that carries it."""

    def __new__(cls, value: str, status: int) -> Kind:
        member = object.__new__(cls)
        member._value_ = value
        member.status = status  # type: ignore[attr-defined]
        return member

    status: int

    missing_protocol_header = ("missing_protocol_header", 400)
    invalid_body = ("invalid_body", 400)
    invalid_client_identity = ("invalid_client_identity", 400)
    invalid_group = ("invalid_group", 400)
    invalid_request = ("invalid_request", 400)
    unauthorized = ("unauthorized", 401)
    forbidden = ("forbidden", 403)
    #: Public mode: a tenant reached a quota (groups per tenant, tenants per server).
    quota_exceeded = ("quota_exceeded", 403)
    #: Public mode: a tenant secret that is malformed, too short or fails its checksum;
    #: every refused secret gets the same answer (lockd.tenancy).
    invalid_tenant = ("invalid_tenant", 403)
    not_found = ("not_found", 404)
    unknown_group = ("unknown_group", 404)
    method_not_allowed = ("method_not_allowed", 405)
    request_timeout = ("request_timeout", 408)
    body_too_large = ("body_too_large", 413)
    unsupported_media_type = ("unsupported_media_type", 415)
    failed_lock_semaphore_full = ("failed_lock_semaphore_full", 423)
    failed_lock_group_paused = ("failed_lock_group_paused", 423)
    # The reboot policy (lockd/policy.py, docs/policy.md): only a new grant is refused.
    failed_lock_outside_window = ("failed_lock_outside_window", 423)
    failed_lock_cooldown = ("failed_lock_cooldown", 423)
    failed_lock_gate_closed = ("failed_lock_gate_closed", 423)
    failed_lock_gate_unreachable = ("failed_lock_gate_unreachable", 423)
    rate_limited = ("rate_limited", 429)
    internal_error = ("internal_error", 500)
    too_many_connections = ("too_many_connections", 503)
    backend_unavailable = ("backend_unavailable", 503)
    backend_contention = ("backend_contention", 503)
    backend_invalid_data = ("backend_invalid_data", 503)
    #: The group's document no longer fits the store's size limit (etcd: about 14,000
    #: holders at its default 1.5 MiB request limit); see docs/operations.md.
    backend_group_too_large = ("backend_group_too_large", 507)


class LockdError(Exception):
    """An error that reaches a client as ``{"kind": ..., "value": ...}``."""

    def __init__(self, kind: Kind, value: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(value)
        self.kind = kind
        self.value = value
        #: Headers the answer carries (Retry-After on a 429).
        self.headers = headers

    @property
    def status(self) -> int:
        return self.kind.status

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "value": self.value}
