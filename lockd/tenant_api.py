"""A tenant's own JSON API, on the FleetLock listener in public mode (lockd/openapi-tenant.json).

Routes, each under the tenant prefix ``/t/<token>/v1`` (or ``/v1`` with the token as the
Basic-auth user)::

    GET  .../groups                  the tenant's groups that have had a grant
    GET  .../groups/<group>          one group (a never-used one answers as a fresh group)
    POST .../groups/<group>/unlock   {"id": ...}: free a dead node's slot

An answer depends only on the secret's own state: a secret nobody used and a tenant that
never used a group answer the same bytes, and a refused secret gets the one
``invalid_tenant`` answer. Nothing answers about another tenant.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from lockd.admin import holder_view
from lockd.errors import Kind, LockdError
from lockd.fleetlock import MAX_ID_LENGTH
from lockd.groups import GROUP_RULE, is_group_name
from lockd.http import SETTINGS, read_body
from lockd.semaphore import Outcome, Semaphore
from lockd.tenancy import PUBLIC, Public, Tenant

ACTOR = "tenant"


async def _tenant(request: web.Request) -> tuple[Public, Tenant]:
    public = request.app[PUBLIC]
    token = request.match_info.get("token")
    # No group: the root carrier (a secret group name) has no place in this API, so a
    # request at /v1/groups without Basic auth is refused like any other bad secret.
    tenant, _ = await public.admit(request, "" if token is None else f"/t/{token}", "")
    return public, tenant


def _group(request: web.Request) -> str:
    group = request.match_info["group"]
    if not is_group_name(group):
        raise LockdError(Kind.invalid_group, f"group {GROUP_RULE}")
    return group


def group_view(name: str, sem: Semaphore, now: float) -> dict[str, Any]:
    """The admin API's Group fields that make sense to a tenant (no policy, no store
    counter): what ``lockd status`` prints."""
    return {
        "name": name,
        "slots": sem.slots,
        "available": sem.available,
        "holders": [holder_view(h, now) for h in sorted(sem.holders, key=lambda h: h.grant_id)],
        "paused": sem.paused,
    }


async def _state(public: Public, tenant: Tenant, group: str) -> Semaphore:
    sem = await public.service.read(public.keys.group(tenant.secret, group))
    return sem if sem is not None else Semaphore.new(public.service.groups.default_slots)


async def list_groups(request: web.Request) -> web.Response:
    public, tenant = await _tenant(request)
    names = await public.group_names(tenant.secret)
    now = time.time()
    views = [group_view(n, await _state(public, tenant, n), now) for n in names]
    return web.json_response({"groups": views})


async def get_group(request: web.Request) -> web.Response:
    public, tenant = await _tenant(request)
    group = _group(request)
    return web.json_response(group_view(group, await _state(public, tenant, group), time.time()))


async def unlock(request: web.Request) -> web.Response:
    public, tenant = await _tenant(request)
    group = _group(request)
    settings = request.app[SETTINGS]
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise LockdError(Kind.invalid_body, "request body is not valid JSON") from None
    id_ = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(id_, str) or not id_ or len(id_) > MAX_ID_LENGTH or not id_.isprintable():
        raise LockdError(
            Kind.invalid_client_identity,
            f"id must be a non-empty printable string of at most {MAX_ID_LENGTH} characters",
        )
    service_group = public.keys.group(tenant.secret, group)
    outcome = await public.service.force_unlock(service_group, id_, actor=ACTOR)
    if outcome is Outcome.NOT_HELD:
        raise LockdError(Kind.not_found, f"{id_!r} holds no slot in group {group!r}")
    sem = await _state(public, tenant, group)
    return web.json_response(
        {"outcome": outcome.value, "group": group_view(group, sem, time.time())}
    )


def add_routes(app: web.Application) -> None:
    """The tenant API's routes, before the FleetLock catch-all."""
    for base in ("/t/{token}/v1", "/v1"):
        app.router.add_get(f"{base}/groups", list_groups)
        app.router.add_get(f"{base}/groups/{{group}}", get_group)
        app.router.add_post(f"{base}/groups/{{group}}/unlock", unlock)
