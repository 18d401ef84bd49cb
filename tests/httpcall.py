"""Plain synchronous HTTP calls to a running lockd, for subprocess tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

FLEETLOCK_HEADERS = {"fleet-lock-protocol": "true"}


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One HTTP request; (status, decoded JSON or text).

    A body (``body`` as JSON, or ``raw`` bytes) goes as ``Content-Type: application/json``
    unless ``headers`` name another type, as lockd's admin API requires of a change and as
    ``lockd`` (the CLI) sends it; without this urllib would label it as a form.
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, text, ctype = resp.status, resp.read().decode(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, text, ctype = exc.code, exc.read().decode(), exc.headers["Content-Type"]
    if ctype and ctype.startswith("application/json"):
        return status, json.loads(text)
    return status, text


def lock(url: str, op: str, id_: str, group: str) -> tuple[int, Any]:
    body = {"client_params": {"id": id_, "group": group}}
    return call(url, "POST", f"/v1/{op}", body, headers=FLEETLOCK_HEADERS)
