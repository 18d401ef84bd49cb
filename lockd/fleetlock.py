"""Parsing and validating FleetLock requests, exactly as PROTOCOL.md describes them.

Pure functions over headers and body bytes, so the rules can be tested without a server.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import NamedTuple

import orjson

from lockd.errors import Kind, LockdError
from lockd.groups import GROUP_RULE, is_group_name

PROTOCOL_HEADER = "fleet-lock-protocol"
MAX_ID_LENGTH = 256
#: FleetLock endpoints, reachable as /v1/... and as //v1/... (flatcar's client with a base
#: URL ending in "/"); ``prefix`` is a tenant prefix, if any.
PATH_RE = re.compile(r"\A(?P<prefix>.*?)/{1,2}v1/(?P<op>pre-reboot|steady-state)\Z")


@functools.lru_cache(maxsize=1024)
def route(path: str) -> tuple[str, str] | None:
    """``(prefix, op)`` of a FleetLock path (:data:`PATH_RE`), or None. Memoised (bounded):
    the handler and the request metrics ask it of every request, for a handful of paths."""
    match = PATH_RE.match(path)
    return None if match is None else (match["prefix"], match["op"])


class ClientParams(NamedTuple):
    """A request's ``client_params``. A NamedTuple: built in C, where a frozen dataclass's
    ``__init__`` costs every request an ``object.__setattr__`` per field (issue #15)."""

    id: str
    group: str


def check_protocol_header(headers: Mapping[str, str]) -> None:
    value = headers.get(PROTOCOL_HEADER)
    if value is None:
        raise LockdError(Kind.missing_protocol_header, "missing 'fleet-lock-protocol: true' header")
    if value.strip().lower() != "true":
        raise LockdError(
            Kind.missing_protocol_header, "header 'fleet-lock-protocol' must be 'true'"
        )


def parse_body(body: bytes) -> ClientParams:
    """``{"client_params": {"id": ..., "group": ...}}`` -> ClientParams, or a 400."""
    try:
        # orjson first (a FleetLock body takes it a fraction of json's time): what it
        # accepts, json decodes to the same value (orjson is the stricter of the two: no
        # NaN, no integer past 64 bits, no lone surrogate, no BOM), and whatever it refuses
        # goes to json, so every answer, error or not, is json's.
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = _json_doc(body)
    if not isinstance(doc, dict):
        raise LockdError(Kind.invalid_body, "request body must be a JSON object")
    params = doc.get("client_params")
    if not isinstance(params, dict):
        raise LockdError(Kind.invalid_body, "request body has no 'client_params' object")
    id_, group = params.get("id"), params.get("group")
    if not isinstance(id_, str) or not id_:
        raise LockdError(
            Kind.invalid_client_identity, "client_params.id must be a non-empty string"
        )
    if len(id_) > MAX_ID_LENGTH or not id_.isprintable():
        raise LockdError(
            Kind.invalid_client_identity,
            f"client_params.id must be printable and at most {MAX_ID_LENGTH} characters",
        )
    if not isinstance(group, str) or not group:
        raise LockdError(Kind.invalid_group, "client_params.group must be a non-empty string")
    if not _is_group_name(group):
        raise LockdError(Kind.invalid_group, f"client_params.group {GROUP_RULE}")
    return ClientParams(id=id_, group=group)


#: A storm sends a handful of group names: the rule's regex checked once each (bounded: the
#: names are the client's, each at most a body long).
_is_group_name = functools.lru_cache(maxsize=256)(is_group_name)


def _json_doc(body: bytes) -> object:
    """The body as the stdlib's json decodes it, or a 400."""
    try:
        if body[:1] == b"{" and body[1:2] not in (b"", b"\x00"):
            # What json.loads(bytes) would decode it as (UTF-8: no BOM, no NUL in the first
            # two bytes), minus its pure-Python encoding detection, on every request.
            return json.loads(body.decode("utf-8", "surrogatepass"))
        return json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad encodings and over-long integers.
        raise LockdError(Kind.invalid_body, "request body is not valid JSON") from None
