"""The reboot policy's configuration keys: parsing them, and checking them against the layout.

:mod:`lockd.config` owns the scheme (TOML key = ``LOCKD_SECTION__KEY`` = ``--set``); this
module owns what the policy keys mean:

- ``[lock]`` defaults every group takes: ``windows``, ``stale_after``, ``expire_after``,
  ``cooldown``, ``history``, ``gates``, plus ``sweep_interval_s``;
- the same keys in a ``[[lock.groups]]`` table override them for that group;
- ``[[gates.prometheus]]``, ``[[gates.webhook]]`` and ``[gates] cache_s`` define the gates
  groups name; ``[[notify.webhook]]`` and ``[notify] queue_size/retries/backoff_s/
  backoff_max_s`` the notifications.

In the environment and ``--set``, lists of tables are JSON (``LOCKD_GATES__PROMETHEUS=
'[{"name": "cluster", "url": "http://prometheus:9090"}]'``), windows a ``;``-separated
string (``LOCKD_LOCK__WINDOWS="Sat,Sun 02:00 2h Europe/Berlin"``). See docs/policy.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from lockd.durations import parse_duration, parse_optional
from lockd.gates import AlertPattern, Gate, PrometheusGate, WebhookGate
from lockd.groups import is_group_name
from lockd.notify import EVENTS, NotifySettings, Webhook
from lockd.policy import DEFAULT_HISTORY, MAX_HISTORY, GroupPolicy
from lockd.windows import Schedule, parse_schedule

#: Policy keys a [[lock.groups]] table may set, overriding [lock]'s.
GROUP_KEYS = ("windows", "stale_after", "expire_after", "cooldown", "history", "gates")
#: Keys that need state in the group's stored document, and what that state is.
NEEDS_STATE = {
    "expire_after": "each holder's grant time and the releases it makes",
    "cooldown": "the time of the last release",
    "history": "the last reboots",
}
#: Why a layout cannot store it.
WHY_NOT = {
    "airlock": "airlock rewrites the key without lockd's fields",
    "locksmith": "locksmith rewrites the key without lockd's fields",
}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: The kinds of lockd.config.KEYS this module converts.
KINDS = ("windows", "duration_off", "history", "nonnegfloat", "nonnegint",
         "prometheus_gates", "webhook_gates", "notify_webhooks")


def convert(kind: str, value: Any) -> Any:
    """One ``[section] key`` value of a kind in :data:`KINDS`; ValueError says why not."""
    if kind == "windows":
        return parse_schedule(value)
    if kind == "duration_off":
        return parse_optional(value)
    if kind == "history":
        return _int(value, 0, MAX_HISTORY)
    if kind == "nonnegint":
        return _int(value, 0, 1000)
    if kind == "nonnegfloat":
        return parse_duration(value)
    tables = _tables(value)
    if kind == "prometheus_gates":
        return tuple(_prometheus(t) for t in tables)
    if kind == "webhook_gates":
        return tuple(_webhook_gate(t) for t in tables)
    if kind == "notify_webhooks":
        return tuple(_notify_webhook(t) for t in tables)
    raise AssertionError(kind)


def group_keys(table: Mapping[str, Any]) -> dict[str, Any]:
    """The policy keys of one ``[[lock.groups]]`` table, converted."""
    found: dict[str, Any] = {}
    for key in GROUP_KEYS:
        if key not in table:
            continue
        try:
            if key == "windows":
                found[key] = parse_schedule(table[key])
            elif key == "history":
                found[key] = _int(table[key], 0, MAX_HISTORY)
            elif key == "gates":
                found[key] = tuple(_names(table[key]))
            else:
                found[key] = parse_optional(table[key])
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}; got {table[key]!r}") from None
    return found


def build(
    v: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]], layout: str,
    stores_state: bool,
) -> dict[str, Any]:
    """The policy fields of :class:`lockd.config.Settings` from converted values ``v`` and
    the group entries (each with the :data:`GROUP_KEYS` it sets)."""
    from lockd.config import ConfigError

    def refuse(where: str, key: str) -> ConfigError:
        why = WHY_NOT.get(layout, f"the {layout} layout keeps no policy state")
        return ConfigError(
            f"{where}{key}: needs {NEEDS_STATE[key]} kept in the group's stored "
            f"document, which only lockd's native layout has; the {layout} layout cannot "
            f"store it ({why}). Use a store in the native layout, or drop the key: reboot "
            "windows, stale_after and health gates work on every layout (docs/policy.md)"
        )

    gates: list[Gate] = [*v.get("gates.prometheus", ()), *v.get("gates.webhook", ())]
    names = [g.name for g in gates]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"gates: two gates are named {name!r}")

    def check_gates(key: str, wanted: tuple[str, ...]) -> None:
        for name in wanted:
            if name not in names:
                known = ", ".join(names) or "none is configured"
                raise ConfigError(f"{key}: no gate named {name!r} ([[gates.*]] names: {known})")

    def finish(policy: GroupPolicy, where: str, given: Mapping[str, Any]) -> GroupPolicy:
        if not stores_state:
            for key in NEEDS_STATE:
                if given.get(key):
                    raise refuse(where, key)
            policy = policy.stateless()
        check_gates(f"{where}gates", policy.gates)
        if policy.expire_after is not None and policy.stale_after is not None \
                and policy.stale_after >= policy.expire_after:
            raise ConfigError(
                f"{where}stale_after: must be shorter than expire_after, or a holder would "
                "be released before it is ever shown stale"
            )
        return replace(policy, report_stale=stores_state and policy.stale_after is not None)

    lock_given = {k.partition(".")[2]: v[k] for k in v if k.startswith("lock.")}
    default = finish(
        GroupPolicy(
            windows=v.get("lock.windows", Schedule()),
            stale_after=v.get("lock.stale_after"),
            expire_after=v.get("lock.expire_after"),
            cooldown=v.get("lock.cooldown") or 0.0,
            history=v.get("lock.history", DEFAULT_HISTORY),
            gates=tuple(v.get("lock.gates", ())),
        ),
        "lock.",
        lock_given,
    )
    policies = {}
    for name, entry in groups.items():
        given = {k: entry[k] for k in GROUP_KEYS if k in entry}
        if not given:
            continue
        values = {k: (val or 0.0) if k == "cooldown" else val for k, val in given.items()}
        policies[name] = finish(
            replace(default, **values), f"lock.groups (group {name!r}): ", given
        )
    notify = NotifySettings(
        webhooks=tuple(v.get("notify.webhook", ())),
        queue_size=v.get("notify.queue_size", 1000),
        retries=v.get("notify.retries", 5),
        backoff=v.get("notify.backoff_s", 1.0) or 1.0,
        backoff_max=v.get("notify.backoff_max_s", 60.0) or 60.0,
    )
    for hook in notify.webhooks:
        for g in hook.groups:
            if not is_group_name(g):
                raise ConfigError(f"notify.webhook: groups: {g!r} is not a group name")
    return {
        "group_policy": default,
        "group_policies": policies,
        "gates": tuple(gates),
        "gate_cache_s": v.get("gates.cache_s", 5.0),
        "notify": notify,
        "sweep_interval": v.get("lock.sweep_interval_s", 30.0),
    }


# Pieces


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be a whole number from {low} to {high}")
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _names(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be a list of names")
    return [i.strip() for i in items if i.strip()]


def _tables(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("must be a JSON list of tables (in the environment or --set)") \
                from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("must be a list of tables")
    return value


def _check_keys(table: Mapping[str, Any], what: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(
            f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )


def _name(table: Mapping[str, Any], what: str) -> str:
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what}: name must be 1-64 of A-Z a-z 0-9 _ . -; got {name!r}")
    return name


def _url(table: Mapping[str, Any], what: str) -> str:
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{what}: url must be an http:// or https:// URL; got {url!r}")
    return url


def _headers(table: Mapping[str, Any], what: str) -> tuple[tuple[str, str], ...]:
    headers = table.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(h, str) for k, h in headers.items()
    ):
        raise ValueError(f"{what}: headers must be a table of strings")
    return tuple(headers.items())


def _timeout(table: Mapping[str, Any], what: str, default: float) -> float:
    try:
        seconds = parse_duration(table.get("timeout_s", default))
    except ValueError as exc:
        raise ValueError(f"{what}: timeout_s {exc}") from None
    if seconds <= 0:
        raise ValueError(f"{what}: timeout_s must be more than 0")
    return seconds


def _patterns(table: Mapping[str, Any], key: str, what: str) -> tuple[AlertPattern, ...]:
    items = table.get(key, [])
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{what}: {key} must be a list of patterns")
    try:
        return tuple(AlertPattern.parse(i) for i in items)
    except ValueError as exc:
        raise ValueError(f"{what}: {key}: {exc}") from None


def _prometheus(t: Mapping[str, Any]) -> PrometheusGate:
    what = f"gate {t.get('name')!r}"
    _check_keys(t, what, {"name", "url", "api", "include", "exclude", "firing_only",
                          "timeout_s"})
    api = t.get("api", "prometheus")
    if api not in ("prometheus", "alertmanager"):
        raise ValueError(f"{what}: api must be 'prometheus' or 'alertmanager'; got {api!r}")
    try:
        firing_only = _bool(t.get("firing_only", False))
    except ValueError as exc:
        raise ValueError(f"{what}: firing_only {exc}") from None
    return PrometheusGate(
        name=_name(t, what), url=_url(t, what), api=api,
        include=_patterns(t, "include", what), exclude=_patterns(t, "exclude", what),
        firing_only=firing_only, timeout=_timeout(t, what, 2.0),
    )


def _webhook_gate(t: Mapping[str, Any]) -> WebhookGate:
    what = f"gate {t.get('name')!r}"
    _check_keys(t, what, {"name", "url", "timeout_s", "headers"})
    return WebhookGate(name=_name(t, what), url=_url(t, what), timeout=_timeout(t, what, 2.0),
                       headers=_headers(t, what))


def _notify_webhook(t: Mapping[str, Any]) -> Webhook:
    what = f"webhook {t.get('url')!r}"
    _check_keys(t, what, {"url", "template", "events", "groups", "timeout_s", "headers",
                          "content_type"})
    template = t.get("template")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{what}: template must be a string")
    events = tuple(_names(t.get("events", list(EVENTS))))
    bad = [e for e in events if e not in EVENTS]
    if bad or not events:
        raise ValueError(f"{what}: events must be some of {', '.join(EVENTS)}; got {bad}")
    content_type = t.get("content_type", "application/json")
    if not isinstance(content_type, str):
        raise ValueError(f"{what}: content_type must be a string")
    return Webhook(
        url=_url(t, what), template=template, events=events,
        groups=tuple(_names(t.get("groups", []))), timeout=_timeout(t, what, 5.0),
        headers=_headers(t, what), content_type=content_type,
    )
