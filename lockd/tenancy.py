"""Public mode: turning a request into a tenant, and a tenant's group into a store key.

A tenant is a capability: whoever knows its secret is the tenant. The secret reaches lockd
by one of three carriers (docs/public.md):

- a token in the base URL path: ``POST /t/<token>/v1/pre-reboot`` (and ``//v1``);
- a token as the Basic-auth user name: ``https://<token>@lock.example/`` makes zincati send
  ``Authorization: Basic base64(<token>:)``;
- a secret group name at the root, ``POST /v1/...`` with ``"group": "<secret>"``: the same
  tenant as the token ``<secret>`` with its group ``default``. zincati also sends its group
  to the OS update server, so this carrier is the weakest.

Every secret must carry about 128 bits: at least :data:`MIN_SECRET_LENGTH` characters of
``[A-Za-z0-9]``, or a token from :func:`new_token` (``lockd_`` + random + checksum, so that a
mistyped token is refused before any lookup). Every refused secret gets the same answer.

Nothing here is stored or logged in clear. A group of a tenant is the service group
``<tenant hash>.<group hash>`` (two HMAC-SHA256 digests under the server's pepper, cut to
128 bits each), a valid ordinary group name: the service, the model and the layouts never
learn that tenants exist. :class:`TenantLayout` keeps those groups under their own key
prefix, apart from a self-hosted deployment's groups.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from lockd.errors import Kind, LockdError
from lockd.layouts.native import NativeLayout
from lockd.service import Decision

TOKEN_PREFIX = "lockd_"
MIN_SECRET_LENGTH = 22  # 22 base62 characters: 131 bits
MAX_SECRET_LENGTH = 128
TOKEN_RANDOM_LENGTH = 32  # 190 bits
CHECKSUM_LENGTH = 6  # base62 of a CRC32: 62**6 > 2**32
#: Bytes of pepper the server needs, at the least.
MIN_PEPPER_BYTES = 32
#: Hex digits kept of each HMAC in a service group name (128 bits).
HASH_HEX = 32
#: Hex digits of the tenant hash that logs show.
LOG_HEX = 8

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_RE = re.compile(rf"[A-Za-z0-9]{{{MIN_SECRET_LENGTH},{MAX_SECRET_LENGTH}}}")
#: The group a root (secret group name) carrier uses inside its tenant.
ROOT_GROUP = "default"

#: The one answer to every refused secret, whatever was wrong with it.
REFUSED_VALUE = (
    "this is a public lock server: put a tenant token in base_url "
    "(https://<host>/t/<token>/ or https://<token>@<host>/; `lockd new-token` makes one), "
    f"or use a secret group name of at least {MIN_SECRET_LENGTH} letters and digits"
)
#: What a path of /t/v1/... means: zincati joined a base_url without its trailing slash.
DROPPED_SLASH_VALUE = (
    "no tenant token in the path: zincati needs the trailing slash on base_url "
    "(base_url = \"https://<host>/t/<token>/\"); without it the token is dropped"
)


def refused() -> LockdError:
    """The one answer to every refused secret."""
    return LockdError(Kind.invalid_tenant, REFUSED_VALUE)


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def new_token() -> str:
    """A fresh tenant token: ``lockd_`` + 32 random base62 characters + a 6-character
    checksum of them."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(TOKEN_RANDOM_LENGTH))
    return TOKEN_PREFIX + body + _checksum(body)


def is_secret(text: str) -> bool:
    """Whether ``text`` may name a tenant: a well-formed token with a correct checksum, or
    at least :data:`MIN_SECRET_LENGTH` letters and digits."""
    if text.startswith(TOKEN_PREFIX):
        rest = text[len(TOKEN_PREFIX) :]
        if not _SECRET_RE.fullmatch(rest) or len(rest) < MIN_SECRET_LENGTH + CHECKSUM_LENGTH:
            return False
        body, check = rest[:-CHECKSUM_LENGTH], rest[-CHECKSUM_LENGTH:]
        return hmac.compare_digest(_checksum(body), check)
    return _SECRET_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Tenant:
    """A resolved request: the tenant's secret, how it came, and the group inside it."""

    secret: str
    carrier: str  # "path", "basic" or "group"
    group: str


def _basic_user(header: str) -> str | None:
    """The secret in ``Authorization: Basic``: the user name, else the password."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused() from None
    user, _, password = decoded.partition(":")
    return user or password


def resolve(prefix: str, authorization: str | None, group: str) -> Tenant:
    """The tenant of a FleetLock request, from its path prefix (what came before
    ``/v1/``), its Authorization header and the group of its body. Raises the one
    :func:`refused` answer for any refused secret, :data:`DROPPED_SLASH_VALUE` for ``/t/v1``."""
    if prefix == "/t":
        raise LockdError(Kind.not_found, DROPPED_SLASH_VALUE)
    if prefix.startswith("/t/"):
        secret, carrier = prefix[3:], "path"
    elif prefix:
        raise LockdError(Kind.not_found, "no such endpoint")
    elif authorization and (user := _basic_user(authorization)) is not None:
        secret, carrier = user, "basic"
    else:
        secret, carrier = group, "group"
    if not is_secret(secret):
        raise refused()
    if carrier == "group":
        return Tenant(secret, carrier, ROOT_GROUP)
    return Tenant(secret, carrier, group)


class Keys:
    """HMAC-SHA256 under the server's pepper: the only way a secret or a group name
    becomes something stored. The pepper is never stored, logged or shown."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"the pepper must be at least {MIN_PEPPER_BYTES} bytes")
        self._pepper = pepper

    def __repr__(self) -> str:
        return "Keys(<pepper>)"

    def _mac(self, *parts: str) -> str:
        msg = b"\x00".join(p.encode() for p in parts)
        return hmac.new(self._pepper, msg, hashlib.sha256).hexdigest()[:HASH_HEX]

    def tenant(self, secret: str) -> str:
        """The tenant's hash: HMAC(pepper, "tenant", secret)."""
        return self._mac("lockd-tenant", secret)

    def group(self, secret: str, group: str) -> str:
        """The service group of ``group`` in the tenant ``secret``: ``<tenant>.<group>``,
        with the group's hash HMAC(pepper, "group", secret, group)."""
        return f"{self.tenant(secret)}.{self._mac('lockd-group', secret, group)}"


_TOKEN_IN_PATH = re.compile(r"/t/[^/]+")


def redact(path: str) -> str:
    """A request path fit for a log line: a token in it becomes ``<token>``."""
    return _TOKEN_IN_PATH.sub("/t/<token>", path)


def short(service_group: str) -> str:
    """What logs show of a tenant's group: a prefix of the tenant's hash."""
    return service_group[:LOG_HEX]


class TenantLayout(NativeLayout):
    """lockd's own document, under a prefix of its own for tenants' groups."""

    name = "tenant"
    prefix = "lockd/v1/tenants/"

    def tenant_prefix(self, tenant_hash: str) -> str:
        """The common prefix of every group key of one tenant."""
        return f"{self.prefix}{tenant_hash}."


def logging_observer(inner: Callable[[Decision], None]) -> Callable[[Decision], None]:
    """``inner`` (the decision log) fed tenants' decisions with only a short hash for the
    group."""

    def observe(d: Decision) -> None:
        inner(replace(d, group=short(d.group)))

    return observe
