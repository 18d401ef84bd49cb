"""Operator commands (``lockd status|groups|unlock|set-max|pause|resume``) over the admin API.

They talk HTTP to a running lockd's admin listener, like ``locksmithctl`` talks to etcd, and
print what ``locksmithctl`` prints where it has an equivalent (``Available: N``, ``Max: N``,
``Old-Max: X``). ``--json`` prints the API's answer instead, for scripts.

Exit codes: 0 done; 1 the server refused (unknown group, id not holding, bad value...);
2 bad usage or values, refused before asking; 3 the server cannot be reached or answered
something that is not lockd; 4 the admin token is missing or wrong.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from lockd.durations import format_duration
from lockd.groups import GROUP_RULE, is_group_name

DEFAULT_SERVER = "http://127.0.0.1:8081"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORIZED = 1, 2, 3, 4


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    """A small blocking client of the admin API (one request per command)."""

    def __init__(
        self,
        server: str,
        token: str | None,
        timeout: float = 10.0,
        *,
        api: str = "/api/v1",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        #: Where the groups are: the admin API's /api/v1, or a tenant's /v1 (--url).
        self.api = api
        self.headers = headers or {}

    def path(self, *parts: str) -> str:
        """``<api>/groups[/<group>[/<action>]]``."""
        return f"{self.api}/groups" + "".join("/" + quote(p, safe="") for p in parts)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        req.add_header("X-Lockd-Actor", _actor())
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for name, value in self.headers.items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return self._decode(resp.read(), resp.status)
        except urllib.error.HTTPError as exc:
            doc = self._decode(exc.read(), exc.code, error=True)
            kind, value = doc.get("kind", f"http_{exc.code}"), doc.get("value", exc.reason)
            if exc.code == 401:
                hint = "wrong token" if self.token else "this server needs --token-file"
                raise CtlError(f"not authorized ({hint}): {value}", EXIT_UNAUTHORIZED) from None
            code = EXIT_UNREACHABLE if exc.code >= 500 else EXIT_REFUSED
            raise CtlError(f"{value} ({kind})", code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(
                f"cannot reach the lockd admin API at {self.server}: {reason} "
                "(is `lockd serve` running? see --server)",
                EXIT_UNREACHABLE,
            ) from None

    def _decode(self, raw: bytes, status: int, error: bool = False) -> Any:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if error and isinstance(doc, dict):
            return doc
        if error or doc is None:
            raise CtlError(
                f"{self.server} answered HTTP {status} without lockd JSON; "
                "is --server the admin listener (default port 8081)?",
                EXIT_UNREACHABLE,
            )
        return doc


def _actor() -> str:
    """Who runs this command, for the server's event log."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    actor = f"{user}@{socket.gethostname()} (lockd ctl)"
    return actor.encode("ascii", "replace").decode()  # HTTP headers are not UTF-8


def _token(args: argparse.Namespace) -> str | None:
    path = args.token_file or os.environ.get("LOCKD_ADMIN_TOKEN_FILE")
    if not path:
        return None
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise CtlError(f"--token-file {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    if not token:
        raise CtlError(f"--token-file {path}: the file is empty", EXIT_USAGE)
    return token


def _server(args: argparse.Namespace) -> str:
    return str(args.server or os.environ.get("LOCKD_ADMIN_URL") or DEFAULT_SERVER)


def _tenant_client(args: argparse.Namespace, url: str) -> AdminClient:
    """A client of a public lockd's tenant API: ``https://HOST/t/TOKEN/`` or
    ``https://TOKEN@HOST/`` (the token as Basic user, as zincati sends it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CtlError(f"--url: expected an http:// or https:// URL, got {url!r}", EXIT_USAGE)
    headers = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    server = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return AdminClient(server, None, timeout=args.timeout, api="/v1", headers=headers)


def _client(args: argparse.Namespace) -> AdminClient:
    url = getattr(args, "url", None) or os.environ.get("LOCKD_TENANT_URL")
    if url:
        return _tenant_client(args, url)
    server = _server(args)
    if not server.startswith(("http://", "https://")):
        raise CtlError(f"--server {server}: expected an http:// or https:// URL", EXIT_USAGE)
    return AdminClient(server, _token(args), timeout=args.timeout)


def _group_arg(text: str) -> str:
    if not is_group_name(text):
        raise argparse.ArgumentTypeError(f"group {GROUP_RULE}, got {text!r}")
    return text


def _slots_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"slots must be a whole number >= 1, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        help=f"admin listener of lockd ($LOCKD_ADMIN_URL; default {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the admin token ($LOCKD_ADMIN_TOKEN_FILE)",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help=argparse.SUPPRESS)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _tenant_url(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        metavar="URL",
        help="a public lockd's tenant URL, your zincati base_url (https://HOST/t/TOKEN/ or "
        "https://TOKEN@HOST/): your tenant's groups instead of the admin API "
        "($LOCKD_TENANT_URL)",
    )


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m}m"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def available(g: dict[str, Any]) -> int:
    """What both ``status`` and ``groups`` print as Available: like locksmithctl, the store's
    own counter where there is one (etcd2, which can go below 0 after a set-max), else the
    free slots."""
    return int(g["available"] if g.get("store_counter") is None else g["store_counter"])


def format_group(g: dict[str, Any]) -> str:
    """locksmithctl's status block, with each holder's age and grant beside its id."""
    lines = [f"Available: {available(g)}", f"Max: {g['slots']}"]
    if g.get("paused"):
        lines.append("Paused: yes (no new grants)")
    mismatch = (g.get("policy") or {}).get("config_mismatch")
    if mismatch:
        lines.append(
            f"Config: {mismatch['configured_here']} slots here, {mismatch['in_store']} in the "
            "store from another replica's configuration (make them agree)"
        )
    lines.extend(policy_lines(g))
    lines.append("")
    if g["holders"]:
        width = max(len("MACHINE ID"), *(len(h["id"]) for h in g["holders"]))
        lines.append(f"{'MACHINE ID':<{width}}  {'AGE':>8}  {'SINCE (UTC)':<20}  GRANT")
        for h in g["holders"]:
            # Holders granted by airlock or locksmith have no grant time: "?".
            age = "?" if h["age_seconds"] is None else _age(h["age_seconds"])
            since = h["granted_at_iso"] or "unknown"
            grant = "-" if h["grant_id"] is None else f"#{h['grant_id']}"
            mark = "  STALE" if h.get("stale") else ""
            lines.append(f"{h['id']:<{width}}  {age:>8}  {since:<20}  {grant}{mark}".rstrip())
    else:
        lines.append("MACHINE ID")
    if g.get("history"):
        lines += ["", "RECENT REBOOTS (newest first)"]
        for r in g["history"][:5]:
            took = "?" if r["seconds"] is None else _age(r["seconds"])
            how = {"release": "", "operator": "  (unlocked by an operator)",
                   "expiry": "  (expired)"}.get(r["ended"], "")
            lines.append(f"{r['id']}  {took} until {r['released_at_iso']}{how}")
    return "\n".join(lines)


def policy_lines(g: dict[str, Any]) -> list[str]:
    """The reboot policy's state, one line each, only for what is configured."""
    p = g.get("policy") or {}
    lines = []
    w = p.get("windows") or {}
    if w.get("configured"):
        state = (f"open until {w['closes_at_iso']}" if w.get("open") and w.get("closes_at_iso")
                 else "open" if w.get("open") else f"closed, opens {w.get('next_open_iso')}")
        lines.append(f"Window: {state} ({'; '.join(w['configured'])})")
    c = p.get("cooldown") or {}
    if c.get("seconds"):
        resting = c.get("cooling_slots") or 0
        rest = f", {resting} slot(s) resting" if resting else ""
        until = f" until {c['until_iso']}" if c.get("until_iso") else ""
        lines.append(f"Cooldown: {format_duration(c['seconds'])}{rest}{until}")
    if p.get("stale_after_seconds"):
        lines.append(f"Stale after: {format_duration(p['stale_after_seconds'])} "
                     f"({g.get('stale_holders', 0)} stale)")
    if p.get("expire_after_seconds"):
        lines.append(f"Expire after: {format_duration(p['expire_after_seconds'])}")
    gates = p.get("gates") or []
    if gates:
        shown = []
        for gate in gates:
            state = gate.get("state") or "not asked yet"
            reason = f" ({gate['reason']})" if gate.get("reason") else ""
            shown.append(f"{gate['name']} {state}{reason}")
        lines.append("Gates: " + ", ".join(shown))
    return lines


# Commands


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.group:
        doc = client.request("GET", client.path(args.group))
        print(json.dumps(doc, indent=2) if args.json else format_group(doc))
        return 0
    doc = client.request("GET", client.path())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    blocks = [f"Group: {g['name']}\n{format_group(g)}" for g in doc["groups"]]
    print("\n\n".join(blocks) if blocks else "no groups yet")
    return 0


def _groups(args: argparse.Namespace) -> int:
    client = _client(args)
    doc = client.request("GET", client.path())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    width = max([len("GROUP"), *(len(g["name"]) for g in doc["groups"])])
    print(f"{'GROUP':<{width}}  {'SLOTS':>5}  {'HOLDERS':>7}  {'AVAILABLE':>9}  PAUSED")
    for g in doc["groups"]:
        paused = "yes" if g["paused"] else "no"
        print(
            f"{g['name']:<{width}}  {g['slots']:>5}  {len(g['holders']):>7}  "
            f"{available(g):>9}  {paused}"
        )
    return 0


def _answer(args: argparse.Namespace, doc: Any, text: str) -> int:
    """The API's answer with --json, else one line for a person."""
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0


def _unlock(args: argparse.Namespace) -> int:
    client = _client(args)
    doc = client.request("POST", client.path(args.group, "unlock"), {"id": args.id})
    return _answer(args, doc, f"Unlocked {args.id} in group {args.group}")


def _set_max(args: argparse.Namespace) -> int:
    client = _client(args)
    doc = client.request("PUT", client.path(args.group, "slots"), {"slots": args.slots})
    return _answer(args, doc, f"Old-Max: {doc['old_slots']}\nMax: {doc['slots']}")


def _pauser(paused: bool) -> Any:
    def run(args: argparse.Namespace) -> int:
        verb = "pause" if paused else "resume"
        client = _client(args)
        doc = client.request("POST", client.path(args.group, verb))
        already = f"Group {args.group} was already {'paused' if paused else 'running'}"
        return _answer(args, doc, f"Group {args.group} {verb}d" if doc["changed"] else already)

    return run


def _new_token(args: argparse.Namespace) -> int:
    # Made here, never sent anywhere: the server learns a tenant at its first request.
    from lockd.tenancy import new_token

    print(new_token())
    return 0


def _guarded(run: Any) -> Any:
    """Turn CtlError into a message on stderr and its exit code."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except CtlError as exc:
            print(f"lockd {args.command}: {exc}", file=sys.stderr)
            return exc.code
        except (KeyError, TypeError, AttributeError) as exc:
            # A 200 JSON answer without the fields of lockd's admin API.
            print(
                f"lockd {args.command}: unexpected answer from {_server(args)} "
                f"({exc!r}); is it lockd's admin listener?",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE

    return wrapper


# Registration into lockd.cli


def _add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("group", nargs="?", type=_group_arg, metavar="GROUP",
                   help="one group (default: every group)")
    _common(p, json_flag=True)
    _tenant_url(p)


def _add_groups(p: argparse.ArgumentParser) -> None:
    _common(p, json_flag=True)
    _tenant_url(p)


def _add_unlock(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the node id holding the slot")
    p.add_argument("--group", "-g", type=_group_arg, default="default",
                   help="group (default: default)")
    _common(p, json_flag=True)
    _tenant_url(p)


def _add_set_max(p: argparse.ArgumentParser) -> None:
    p.add_argument("slots", type=_slots_arg, metavar="N", help="new number of slots (>= 1)")
    p.add_argument("--group", "-g", type=_group_arg, default="default",
                   help="group (default: default)")
    _common(p, json_flag=True)


def _add_group_positional(p: argparse.ArgumentParser) -> None:
    p.add_argument("group", type=_group_arg, metavar="GROUP")
    _common(p, json_flag=True)


#: name -> (help, add_arguments, run): the operator subcommands of ``lockd``.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "status": ("show slots and holders (with age) of every group or of GROUP",
               _add_status, _guarded(_status)),
    "groups": ("list groups with slots, holders and paused state", _add_groups,
               _guarded(_groups)),
    "unlock": ("free the slot ID holds (a dead node)", _add_unlock, _guarded(_unlock)),
    "set-max": ("change a group's slots at run time", _add_set_max, _guarded(_set_max)),
    "pause": ("refuse new grants in GROUP", _add_group_positional, _guarded(_pauser(True))),
    "resume": ("grant again in GROUP", _add_group_positional, _guarded(_pauser(False))),
    "new-token": ("print a fresh tenant token for a public lockd (base_url "
                  "https://HOST/t/TOKEN/)", lambda p: None, _new_token),
}
