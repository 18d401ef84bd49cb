"""Configuration: one TOML file, overridden by ``LOCKD_*`` environment variables, then flags.

One naming scheme, written once (README, "Configuration"): the TOML key ``[section] key`` is
the environment variable ``LOCKD_SECTION__KEY`` and the flag ``--set section.key=VALUE``;
the common keys also have short flags (``--listen``, ``--backend``...).

airlock's config file is read unchanged: ``[service] address/port``, ``[status]``,
``[etcd3] endpoints``, ``[lock] default_group_name/default_slots/[[lock.groups]]``.

A value that cannot work raises :class:`ConfigError` naming the key and where it came from.

Hand-written rather than pydantic-settings: the one flat key table below serves the TOML
file, the environment and ``--set`` alike, errors name the origin of a value (the file, the
variable or the flag) as well as the key, airlock's keys map onto lockd's, and groups from
the environment and flags merge with the file's by name. A settings library would need
custom sources for each of these, and a compiled dependency for a ~400-line module.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from lockd import policyconfig
from lockd.gates import Gate
from lockd.groups import GROUP_RULE, GroupSettings, is_group_name
from lockd.notify import NotifySettings
from lockd.policy import GroupPolicy

ENV_PREFIX = "LOCKD_"
DEFAULT_STATE_DIR = "~/.local/state/lockd"
SYSTEM_STATE_DIR = "/var/lib/lockd"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


class GroupError(ValueError):
    """One entry of lock.groups is wrong; the message names the entry, not the whole list."""


#: A configuration file is a few KiB; anything far larger is not one.
MAX_CONFIG_BYTES = 1 << 20
#: More worker processes than this is a typo, not a machine.
MAX_WORKERS = 256
#: The most slots a group may have, in configuration and in the admin API alike.
MAX_SLOTS = 1_000_000


@dataclass(frozen=True)
class Listener:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    listen: Listener = Listener("127.0.0.1", 8080)
    backend: str = ""  # empty: sqlite in state_dir
    state_dir: str = ""
    default_group_name: str = "default"
    default_slots: int = 1
    groups: Mapping[str, int] = field(default_factory=dict)
    strict_groups: bool = False
    timeout: float = 10.0
    #: Refusals from the store's change feed (lockd.view), trusted for at most view_max_age.
    view: bool = True
    view_max_age: float = 1.0
    max_body_bytes: int = 4096
    #: 0: from the descriptor limit (lockd.connections.default_max_connections).
    max_connections: int = 0
    #: A connection without a complete request for this long is closed: silent ones,
    #: trickled headers, idle keep-alives (zincati reconnects for every poll anyway).
    idle_timeout: float = 15.0
    #: Time to receive a request's body once its headers are in.
    body_timeout: float = 15.0
    log_format: str = "text"
    log_level: str = "info"
    #: False: an answer that changes nothing (refusal, re-lock, steady-state of a
    #: non-holder) is a line the first time a node gets it in a group, then summarised per
    #: group every ``log_summary_interval`` seconds (lockd.decisionlog).
    log_every_decision: bool = False
    log_summary_interval: float = 60.0
    admin_listen: Listener | None = Listener("127.0.0.1", 8081)
    admin_token_file: str = ""
    #: Host names (with or without :port) and origins the admin listener also serves,
    #: beside this machine's own names; see lockd.admin.Origins.
    admin_allowed_hosts: tuple[str, ...] = ()
    admin_allowed_origins: tuple[str, ...] = ()
    metrics_listen: Listener | None = None  # airlock's [status]; /metrics is on admin too
    #: Native TLS on the FleetLock listener (PEM files, reread on SIGHUP); see lockd.tlsfiles.
    tls: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    shutdown_timeout: float = 10.0
    #: Processes serving the listeners (lockd.workers); 1: this process serves, no supervisor.
    workers: int = 1
    #: Public multi-tenant mode (docs/public.md): tenants are secrets, stored as HMACs
    #: under ``public_pepper``, which is never shown (repr=False) nor stored.
    public_enabled: bool = False
    public_pepper: bytes = field(default=b"", repr=False)
    #: Peers whose X-Forwarded-For is believed (addresses or networks).
    public_trusted_proxies: tuple[str, ...] = ()
    #: Abuse limits (lockd.ratelimit): per client network on new groups, on refused
    #: secrets and on every request, per tenant on everything else. Sized in
    #: docs/public.md; reloaded on SIGHUP (the pepper is not).
    public_ip_create_rate: str = "20/minute"
    public_ip_miss_rate: str = "30/minute"
    public_tenant_rate: str = "3000/minute"
    public_ip_rate: str = "6000/minute"
    public_max_groups_per_tenant: int = 100
    public_max_tenants: int = 1_000_000
    #: Where the limit counters live: "" (the store's Redis for a Redis store, else
    #: memory), ``memory://`` (per process) or a ``redis://``/``rediss://`` URL. Restart-only:
    #: new storage starts every count afresh.
    public_limits_url: str = ""
    #: A tenant's group with no holder and no request for this long is deleted (None: never).
    public_delete_idle_after: float | None = 30 * 86400.0
    # The reboot policy (lockd.policyconfig, docs/policy.md).
    group_policy: GroupPolicy = field(default_factory=GroupPolicy)
    group_policies: Mapping[str, GroupPolicy] = field(default_factory=dict)
    gates: tuple[Gate, ...] = ()
    gate_cache_s: float = 5.0
    notify: NotifySettings = field(default_factory=NotifySettings)
    sweep_interval: float = 30.0
    source: str = "defaults"

    @property
    def backend_url(self) -> str:
        if self.backend:
            return self.backend
        return f"sqlite://{Path(self.resolved_state_dir) / 'lockd.db'}"

    @property
    def resolved_state_dir(self) -> str:
        if self.state_dir:
            return os.path.abspath(os.path.expanduser(self.state_dir))
        if os.geteuid() == 0:
            return SYSTEM_STATE_DIR
        return os.path.expanduser(DEFAULT_STATE_DIR)

    def check_state_dir(self) -> None:
        """Under the default store, the state directory must be creatable and writable."""
        if self.backend:
            return
        path = self.resolved_state_dir
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"storage.state_dir: cannot create {path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"storage.state_dir: {path} is not writable by this user")

    def group_settings(self) -> GroupSettings:
        return GroupSettings(
            default_slots=self.default_slots, slots=dict(self.groups), strict=self.strict_groups,
            policy=self.group_policy, policies=dict(self.group_policies),
        )


# Every key lockd knows: "section.key" -> kind. Parsing, env and --set all go through it.
KEYS: dict[str, str] = {
    "service.address": "str",
    "service.port": "port",
    "service.max_body_bytes": "posint",
    "service.tls": "bool",
    "service.tls_cert": "str",
    "service.tls_key": "str",
    "service.max_connections": "posint",
    "service.idle_timeout_s": "posfloat",
    "service.body_timeout_s": "posfloat",
    "service.workers": "workers",
    "storage.backend": "str",
    "storage.state_dir": "str",
    "storage.timeout_s": "posfloat",
    "storage.view": "bool",
    "storage.view_max_age_s": "posfloat",
    "lock.default_group_name": "group",
    "lock.default_slots": "posint",
    "lock.strict_groups": "bool",
    "lock.groups": "groups",
    # The reboot policy: defaults for every group (docs/policy.md).
    "lock.windows": "windows",
    "lock.stale_after": "duration_off",
    "lock.expire_after": "duration_off",
    "lock.cooldown": "duration_off",
    "lock.history": "history",
    "lock.gates": "strlist",
    "lock.sweep_interval_s": "posfloat",
    "gates.prometheus": "prometheus_gates",
    "gates.webhook": "webhook_gates",
    "gates.cache_s": "nonnegfloat",
    "notify.webhook": "notify_webhooks",
    "notify.queue_size": "posint",
    "notify.retries": "nonnegint",
    "notify.backoff_s": "posfloat",
    "notify.backoff_max_s": "posfloat",
    "admin.enabled": "bool",
    "admin.address": "str",
    "admin.port": "port",
    "admin.token_file": "str",
    "admin.allowed_hosts": "strlist",
    "admin.allowed_origins": "strlist",
    "status.enabled": "bool",
    "status.address": "str",
    "status.port": "port",
    "status.tls": "notls",
    "etcd3.endpoints": "strlist",
    "etcd3.transaction_timeout_ms": "posint",
    "etcd3.tls_ca": "str",
    "etcd3.tls_cert": "str",
    "etcd3.tls_key": "str",
    # airlock's names for the same files (airlock reads them; lockd maps them to tls_*).
    "etcd3.server_ca_cert_path": "str",
    "etcd3.client_cert_pub_path": "str",
    "etcd3.client_cert_key_path": "str",
    "log.format": "logformat",
    "log.level": "loglevel",
    "log.every_decision": "bool",
    "log.summary_interval_s": "posfloat",
    "shutdown.timeout_s": "posfloat",
    "public.enabled": "bool",
    "public.pepper_file": "str",
    # From the environment only (LOCKD_PUBLIC__PEPPER): a secret has no place in the file.
    "public.pepper": "str",
    "public.trusted_proxies": "strlist",
    "public.ip_create_rate": "rate",
    "public.ip_miss_rate": "rate",
    "public.tenant_rate": "rate",
    "public.ip_rate": "rate",
    "public.limits_url": "limitsurl",
    "public.max_groups_per_tenant": "posint",
    "public.max_tenants": "posint",
    "public.delete_idle_after": "duration_off",
}
# airlock keys that lockd accepts and ignores, so an airlock file loads unchanged (none
# now: its client certificate paths map onto the etcd:// URL, see _etcd3_url).
IGNORED: set[str] = set()


def _convert(key: str, value: Any, origin: str) -> Any:
    kind = KEYS[key]
    where = f"{key} (from {origin})"
    text = isinstance(value, str)
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError("must be a string")
            return value
        if kind in ("posint", "port"):
            if isinstance(value, bool):
                raise ValueError("must be a whole number")
            number = int(value.strip()) if text else value
            if not isinstance(number, int):
                raise ValueError("must be a whole number")
            if kind == "port" and not 0 <= number <= 65535:
                raise ValueError("must be a port number from 0 to 65535")
            if kind == "posint" and number < 1:
                raise ValueError("must be at least 1")
            if kind == "posint" and key == "lock.default_slots" and number > MAX_SLOTS:
                raise ValueError(f"must be at most {MAX_SLOTS}")
            return number
        if kind == "workers":
            if text and value.strip().lower() == "auto":
                return len(os.sched_getaffinity(0))  # the cores this process may run on
            number = int(value.strip()) if text and value.strip().isdigit() else value
            if isinstance(number, bool) or not isinstance(number, int):
                raise ValueError("must be a whole number or 'auto'")
            if not 1 <= number <= MAX_WORKERS:
                raise ValueError(f"must be from 1 to {MAX_WORKERS}, or 'auto'")
            return number
        if kind == "posfloat":
            number = float(value) if text or isinstance(value, int | float) else None
            if number is None or isinstance(value, bool) or not number > 0:
                raise ValueError("must be a number greater than 0")
            return number
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if kind == "group":
            if not is_group_name(value):
                raise ValueError(GROUP_RULE)
            return value
        if kind == "strlist":
            items = value.split(",") if text else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError("must be a list of strings")
            return [i.strip() for i in items if i.strip()]
        if kind == "logformat":
            if value not in ("text", "json"):
                raise ValueError("must be 'text' or 'json'")
            return value
        if kind == "loglevel":
            if not isinstance(value, str) or value.lower() not in (
                "debug",
                "info",
                "warning",
                "error",
            ):
                raise ValueError("must be one of debug, info, warning, error")
            return value.lower()
        if kind == "groups":
            return _groups(value)
        if kind == "rate":
            from lockd.ratelimit import check_rate

            if not isinstance(value, str):
                raise ValueError("must be a rate such as 20/minute")
            check_rate(value)
            return value
        if kind == "limitsurl":
            from lockd.ratelimit import check_limits_url

            if not isinstance(value, str):
                raise ValueError("must be memory:// or a redis:// URL")
            try:
                return check_limits_url(value)
            except ValueError as exc:
                # The URL is not echoed: it may carry the Redis password.
                raise ConfigError(f"{where}: {exc} (the URL is not shown)") from None
        if kind in policyconfig.KINDS:
            return policyconfig.convert(kind, value)
        if kind == "notls":
            # airlock's own example file says tls = false, and airlock refuses to start
            # without it; lockd reads it so that file loads unchanged.
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            if value:
                raise ValueError(
                    "lockd serves plain HTTP on this listener; terminate TLS at a reverse "
                    "proxy in front of it (docs/production.md) and set tls = false"
                )
            return value
    except GroupError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}; got {value!r}") from None
    raise AssertionError(kind)


def _groups(value: Any) -> dict[str, dict[str, Any]]:
    """``[[lock.groups]]`` tables, or ``"workers=2,db=1"`` (or the tables as JSON) from
    env/flags: per group, the keys its entry sets (``slots``, policy keys).

    A group without ``slots`` takes ``default_slots`` (None here), as in airlock.
    """
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("must be NAME=SLOTS,... or a JSON list of group tables") from None
    elif isinstance(value, str):
        value = [
            {"name": n.strip(), "slots": s.strip()}
            for n, _, s in (item.partition("=") for item in value.split(",") if item.strip())
        ]
    if not isinstance(value, list):
        raise ValueError("must be a list of {name, slots} tables")
    groups: dict[str, dict[str, Any]] = {}
    for i, table in enumerate(value):
        if not isinstance(table, dict):
            raise GroupError(f"entry {i + 1} must be a table with a name and optional slots")
        unknown = sorted(set(table) - {"name", "slots", *policyconfig.GROUP_KEYS})
        if unknown:
            keys = ", ".join(("name", "slots", *policyconfig.GROUP_KEYS))
            raise GroupError(f"entry {i + 1}: unknown key {unknown[0]!r} (a group has {keys})")
        name, slots = table.get("name"), table.get("slots")
        if not is_group_name(name):
            raise GroupError(f"entry {i + 1}: name {GROUP_RULE}; got {name!r}")
        try:
            entry = policyconfig.group_keys(table)
        except ValueError as exc:
            raise GroupError(f"group {name!r}: {exc}") from None
        if "slots" not in table:
            groups[name] = entry
            continue
        if slots is None or slots == "":
            groups[name] = {**entry, "slots": None}
            continue
        try:
            slots = int(slots) if isinstance(slots, str) else slots
        except ValueError:
            slots = None
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
            raise GroupError(
                f"group {name!r}: slots must be a whole number from 1 to {MAX_SLOTS}; "
                f"got {table.get('slots')!r}"
            )
        if name in groups:
            raise GroupError(f"group {name!r} is listed twice")
        groups[name] = {**entry, "slots": slots}
    return groups


def _flatten(doc: Mapping[str, Any], origin: str) -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{section} (from {origin}): must be a [section] table")
        for key, value in table.items():
            name = f"{section}.{key}"
            if name in IGNORED:
                continue
            if name not in KEYS:
                known = ", ".join(sorted(k for k in KEYS if k.startswith(section + ".")))
                raise ConfigError(
                    f"{name} (from {origin}): unknown key; known keys here: {known or 'see README'}"
                )
            flat[name] = (value, origin)
    return flat


def _from_env(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
        name = f"{section}.{key}"
        if name not in KEYS:
            raise ConfigError(f"{var}: no such key {name!r}")
        flat[name] = (value, f"environment {var}")
    return flat


def parse_assignment(text: str) -> tuple[str, str]:
    """``section.key=value`` from ``--set``."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in KEYS:
        raise ConfigError(
            f"--set {text!r}: expected section.key=value with a known key "
            f"(e.g. lock.default_slots=2)"
        )
    return name, value


def load(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from defaults < TOML file < environment < flags (``overrides``)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, tuple[Any, str]] = {}
    source = "defaults"
    if path is None and environ.get("LOCKD_CONFIG"):
        path = environ["LOCKD_CONFIG"]
    layers: list[dict[str, tuple[Any, str]]] = []
    if path:
        layers.append(_flatten(read_toml(path), path))
        source = path
    layers.append(_from_env(environ))
    layers.append({name: (value, f"flag for {name}") for name, value in (overrides or {}).items()})
    groups: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, (value, origin) in layer.items():
            if name == "lock.groups":
                # Groups from the environment and flags add to the file's, or override
                # the keys they set of one by name; they never drop a group the file lists.
                for group, entry in _convert(name, value, origin).items():
                    groups.setdefault(group, {}).update(entry)
            else:
                merged[name] = (value, origin)
    if path and merged.get("public.pepper", (None, ""))[1] == path:
        raise ConfigError(
            f"public.pepper (from {path}): keep the pepper out of the configuration file; "
            "use public.pepper_file or the environment variable LOCKD_PUBLIC__PEPPER"
        )
    if "service.tls" in merged and _convert("service.tls", *merged["service.tls"]) and not (
        merged.get("service.tls_cert") and merged.get("service.tls_key")
    ):
        # Checked first, so that airlock's file with tls = true is told this about
        # [service] before anything about [status].
        raise ConfigError(
            f"service.tls (from {merged['service.tls'][1]}): TLS on the FleetLock listener "
            "needs service.tls_cert and service.tls_key (PEM files); or terminate TLS at a "
            "reverse proxy in front of lockd and set tls = false"
        )
    values = {name: _convert(name, value, origin) for name, (value, origin) in merged.items()}
    values["lock.groups"] = groups
    if path and "lock.strict_groups" not in values and "etcd3.endpoints" in values:
        # airlock's file (airlock cannot run without [etcd3]): airlock refuses groups it
        # does not list, and so does lockd under that file unless told otherwise.
        values["lock.strict_groups"] = True
    return _settings(values, source)


def read_toml(path: str) -> dict[str, Any]:
    """The TOML document at ``path``; every way it can fail names the path."""
    where = f"--config {path}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        # A FIFO would block the reader (and, on SIGHUP, the event loop) until written.
        raise ConfigError(f"{where}: not a regular file")
    try:
        with open(path, "rb") as fh:
            return tomllib.loads(fh.read(MAX_CONFIG_BYTES + 1).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None


def _settings(v: dict[str, Any], source: str) -> Settings:
    d = Settings()
    listen = Listener(v.get("service.address", d.listen.host), v.get("service.port", d.listen.port))
    admin: Listener | None = Listener(
        v.get("admin.address", "127.0.0.1"), v.get("admin.port", 8081)
    )
    if not v.get("admin.enabled", True):
        admin = None
    metrics = None
    if v.get("status.enabled", "status.port" in v or "status.address" in v):
        metrics = Listener(v.get("status.address", "127.0.0.1"), v.get("status.port", 2222))
    backend = v.get("storage.backend", "")
    if not backend and v.get("etcd3.endpoints"):
        backend = _etcd3_url(v)
    timeout = v.get("storage.timeout_s", d.timeout)
    if "etcd3.transaction_timeout_ms" in v and "storage.timeout_s" not in v:
        timeout = v["etcd3.transaction_timeout_ms"] / 1000
    default_name = v.get("lock.default_group_name", "default")
    default_slots = v.get("lock.default_slots", 1)
    entries = v.get("lock.groups", {})
    groups = {
        name: default_slots if entry.get("slots") is None else entry["slots"]
        for name, entry in entries.items()
    }
    groups.setdefault(default_name, default_slots)
    settings = Settings(
        listen=listen,
        backend=backend,
        state_dir=v.get("storage.state_dir", ""),
        default_group_name=default_name,
        default_slots=default_slots,
        groups=groups,
        strict_groups=v.get("lock.strict_groups", False),
        timeout=timeout,
        view=v.get("storage.view", d.view),
        view_max_age=v.get("storage.view_max_age_s", d.view_max_age),
        max_body_bytes=v.get("service.max_body_bytes", d.max_body_bytes),
        max_connections=v.get("service.max_connections", d.max_connections),
        idle_timeout=v.get("service.idle_timeout_s", d.idle_timeout),
        body_timeout=v.get("service.body_timeout_s", d.body_timeout),
        log_format=v.get("log.format", d.log_format),
        log_level=v.get("log.level", d.log_level),
        log_every_decision=v.get("log.every_decision", d.log_every_decision),
        log_summary_interval=v.get("log.summary_interval_s", d.log_summary_interval),
        admin_listen=admin,
        admin_token_file=v.get("admin.token_file", ""),
        admin_allowed_hosts=tuple(v.get("admin.allowed_hosts", ())),
        admin_allowed_origins=tuple(v.get("admin.allowed_origins", ())),
        metrics_listen=metrics,
        shutdown_timeout=v.get("shutdown.timeout_s", d.shutdown_timeout),
        workers=v.get("service.workers", d.workers),
        tls=v.get("service.tls", False),
        tls_cert=os.path.expanduser(v.get("service.tls_cert", "")),
        tls_key=os.path.expanduser(v.get("service.tls_key", "")),
        public_enabled=v.get("public.enabled", False),
        public_pepper=_pepper(v),
        public_trusted_proxies=tuple(v.get("public.trusted_proxies", ())),
        public_ip_create_rate=v.get("public.ip_create_rate", d.public_ip_create_rate),
        public_ip_miss_rate=v.get("public.ip_miss_rate", d.public_ip_miss_rate),
        public_tenant_rate=v.get("public.tenant_rate", d.public_tenant_rate),
        public_ip_rate=v.get("public.ip_rate", d.public_ip_rate),
        public_limits_url=v.get("public.limits_url", d.public_limits_url),
        public_max_groups_per_tenant=v.get(
            "public.max_groups_per_tenant", d.public_max_groups_per_tenant),
        public_max_tenants=v.get("public.max_tenants", d.public_max_tenants),
        public_delete_idle_after=v.get(
            "public.delete_idle_after", d.public_delete_idle_after),
        source=source,
    )
    layout = _layout(settings.backend_url)
    settings = replace(
        settings,
        **policyconfig.build(v, entries, layout.name, layout.stores_policy_state),
    )
    _check(settings)
    return settings


def _pepper(v: dict[str, Any]) -> bytes:
    """The public mode's pepper: LOCKD_PUBLIC__PEPPER, else the file public.pepper_file."""
    if v.get("public.pepper"):
        return str(v["public.pepper"]).strip().encode()
    path = v.get("public.pepper_file")
    if not path:
        return b""
    try:
        with open(os.path.expanduser(path), "rb") as fh:
            return fh.read(4096).strip()
    except OSError as exc:
        raise ConfigError(f"public.pepper_file: cannot read {path}: {exc.strerror}") from None
def _layout(url: str) -> Any:
    """The layout a backend URL names (native if the URL is wrong: _check says why)."""
    from lockd.backends import InvalidBackendURL
    from lockd.layouts import LAYOUTS
    from lockd.store import split_layout

    try:
        return LAYOUTS[split_layout(url)[1]]
    except InvalidBackendURL:
        return LAYOUTS["native"]


def _etcd3_url(v: dict[str, Any]) -> str:
    """airlock's [etcd3] section as an etcd:// URL in airlock's own keyspace."""
    endpoints = v["etcd3.endpoints"]
    hosts = ",".join(e.split("://", 1)[-1].rstrip("/") for e in endpoints)
    options = {"layout": "airlock"}
    if any(e.lower().startswith("https://") for e in endpoints):
        options["tls"] = "true"
    for option, names in (
        ("tls_ca", ("etcd3.tls_ca", "etcd3.server_ca_cert_path")),
        ("tls_cert", ("etcd3.tls_cert", "etcd3.client_cert_pub_path")),
        ("tls_key", ("etcd3.tls_key", "etcd3.client_cert_key_path")),
    ):
        path = next((v[n] for n in names if v.get(n)), "")
        if path:
            options[option] = os.path.expanduser(path)
    if "etcd3.transaction_timeout_ms" in v:
        # airlock's timeout bounds a whole transaction (it becomes storage.timeout_s); one
        # try of one member gets half of it, so a dead member leaves time for the next.
        options["timeout"] = str(v["etcd3.transaction_timeout_ms"] / 2000)
    return f"etcd://{hosts}?{urlencode(options)}"


def _check(s: Settings) -> None:
    """Cross-key checks that a single value's type cannot express."""
    from lockd.backends import InvalidBackendURL
    from lockd.store import open_store

    try:
        open_store(s.backend_url)
    except InvalidBackendURL as exc:
        raise ConfigError(f"storage.backend: {exc}") from None
    if s.workers > 1 and s.backend_url.startswith("memory:"):
        raise ConfigError(
            f"service.workers (--workers): {s.workers} workers cannot share memory://, each "
            "process would hold its own semaphores; use one worker, or a shared store "
            "(sqlite://, redis://, etcd://) in storage.backend"
        )
    if s.admin_token_file:
        token = os.path.expanduser(s.admin_token_file)
        if not os.path.isfile(token) or not os.access(token, os.R_OK):
            raise ConfigError(f"admin.token_file: {s.admin_token_file} is not a readable file")
    if s.tls:
        from lockd.tlsfiles import TlsError, server_context

        try:
            server_context(s.tls_cert, s.tls_key)
        except TlsError as exc:
            raise ConfigError(f"service.tls_cert/tls_key: {exc}") from None
    if s.public_enabled:
        from lockd.tenancy import MIN_PEPPER_BYTES

        if len(s.public_pepper) < MIN_PEPPER_BYTES:
            raise ConfigError(
                f"public.pepper_file: public mode needs a pepper of at least "
                f"{MIN_PEPPER_BYTES} bytes in public.pepper_file or LOCKD_PUBLIC__PEPPER "
                "(e.g. `head -c 48 /dev/urandom | base64 > /etc/lockd/pepper`)"
            )
        from lockd.ratelimit import parse_networks

        try:
            parse_networks(s.public_trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"public.trusted_proxies: {exc}") from None
        if open_store(s.backend_url).layout.name != "native":
            raise ConfigError(
                "storage.backend: public mode keeps tenants in lockd's own layout; "
                "it cannot run on an airlock or locksmith keyspace"
            )
    from lockd.admin import Origins

    Origins.of(s)  # admin.allowed_hosts / allowed_origins: refused here, naming the key
    taken = {str(s.listen): "service.address/port"}
    for name, listener in (
        ("admin.address/port", s.admin_listen),
        ("status.address/port", s.metrics_listen),
    ):
        if listener is not None and listener.port != 0 and str(listener) in taken:
            raise ConfigError(f"{name}: {listener} is already used by {taken[str(listener)]}")
        if listener is not None:
            taken[str(listener)] = name
