"""``lockd serve``: its flags, which are configuration keys, and running the server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lockd.config import ConfigError, Listener, load, parse_assignment

EPILOG = """\
configuration:
  Settings come from, lowest to highest: built-in defaults, the TOML file (--config or
  $LOCKD_CONFIG), LOCKD_<SECTION>__<KEY> environment variables, then flags. Every TOML key
  [section] key can be set with --set section.key=VALUE or LOCKD_SECTION__KEY=VALUE,
  e.g. [lock] default_slots = LOCKD_LOCK__DEFAULT_SLOTS = --set lock.default_slots=2.
  airlock's config.toml is read unchanged (lockd serve --config /etc/airlock/config.toml).

backends (--backend URL):
  sqlite:///var/lib/lockd/lockd.db   embedded and durable (the default, in --state-dir)
  memory://                          volatile, for tests and throwaway runs
  redis://host:6379/0, rediss://, unix:///path.sock, redis+sentinel://host:26379/name
  redis+cluster://host:7000[,host:7001...], rediss+cluster://   Redis Cluster
  etcd://host:2379[,host2:2379][?layout=airlock]   etcd v3
  etcd2://host:2379                  etcd v2 keys API, shared with locksmith

signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the configuration file (with
  --workers N: the process started passes both to every worker).
"""


def _listener(text: str) -> Listener:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return Listener(host.strip("[]") or "0.0.0.0", int(port))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="TOML configuration file (lockd's or airlock's); also $LOCKD_CONFIG",
    )
    p.add_argument(
        "--listen",
        type=_listener,
        metavar="HOST:PORT",
        help="FleetLock listener = [service] address/port (default 127.0.0.1:8080)",
    )
    p.add_argument(
        "--backend",
        metavar="URL",
        help="store URL = [storage] backend (default sqlite in the state dir)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="[storage] state_dir for the default sqlite store "
        "(default /var/lib/lockd as root, else ~/.local/state/lockd)",
    )
    p.add_argument(
        "--default-slots",
        type=int,
        metavar="N",
        help="[lock] default_slots: slots of any group not configured (default 1)",
    )
    p.add_argument(
        "--group",
        action="append",
        metavar="NAME=SLOTS",
        default=None,
        help="[[lock.groups]]: slots of one group; repeatable",
    )
    p.add_argument(
        "--strict-groups",
        action="store_true",
        default=None,
        help="[lock] strict_groups: refuse unconfigured groups with 404 unknown_group",
    )
    p.add_argument(
        "--admin-listen",
        type=_listener,
        metavar="HOST:PORT",
        help="admin API, status page and /metrics = [admin] address/port (default 127.0.0.1:8081)",
    )
    p.add_argument(
        "--workers",
        metavar="N|auto",
        help="[service] workers: processes serving the same ports over the shared store "
        "(default 1; auto = one per usable core); memory:// allows only 1",
    )
    p.add_argument("--no-admin", action="store_true", help="[admin] enabled = false")
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="[admin] token_file: require this bearer token on the admin listener",
    )
    p.add_argument("--log-format", choices=["text", "json"], help="[log] format (default text)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="[log] level (default info)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any configuration key, e.g. --set storage.timeout_s=2; repeatable",
    )


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as configuration keys, so they go through the same checks as the file."""
    o: dict[str, Any] = dict(parse_assignment(a) for a in args.set)
    if args.listen:
        o["service.address"], o["service.port"] = args.listen.host, args.listen.port
    if args.admin_listen:
        o["admin.address"], o["admin.port"] = args.admin_listen.host, args.admin_listen.port
    pairs = {
        "storage.backend": args.backend,
        "storage.state_dir": args.state_dir,
        "service.workers": args.workers,
        "lock.default_slots": args.default_slots,
        "lock.strict_groups": args.strict_groups,
        "admin.token_file": args.admin_token_file,
        "log.format": args.log_format,
        "log.level": args.log_level,
        "lock.groups": ",".join(args.group) if args.group else None,
    }
    o.update({k: v for k, v in pairs.items() if v is not None})
    if args.no_admin:
        o["admin.enabled"] = False
    return o


def run(args: argparse.Namespace) -> int:
    from lockd import daemon, logs, workers
    from lockd.decisionlog import log_decision

    spec = workers.worker_spec()  # set when a supervisor started this process

    def reload() -> Any:
        overrides = serve_overrides(args)
        if spec is not None:
            overrides.update(spec.overrides)  # the ports the supervisor holds
        return load(args.config, overrides=overrides)

    try:
        settings = reload()
        settings.check_state_dir()
    except ConfigError as exc:
        print(f"lockd: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_format, settings.log_level)
    if spec is not None:
        workers.die_with_supervisor(spec)
    elif settings.workers > 1:
        return workers.supervise(settings, args.argv)
    log_decision.configure(
        settings.log_format, settings.log_every_decision, settings.log_summary_interval
    )
    return daemon.run(settings, reload, reuse_port=spec is not None)
