"""The admin listener refuses what a web page can make a browser send.

The admin listener is loopback-only and token-less by default, so the browser of an operator
who has it open (directly or through ``ssh -L``) is the way in: any page can POST to it
(a ``no-cors`` fetch, a form) and, after a DNS rebinding, even read it. lockd therefore
refuses an admin request whose ``Host`` is not one the listener serves or whose ``Origin``
is foreign (403), and a state-changing request whose body is not declared
``application/json`` (415): a browser cannot send that cross-origin without a CORS
preflight, which the admin listener never grants.

The attacks run in a real headless Chromium: a page served by a second local HTTP server
(another port, hence another origin), and the status page loaded under a rebound name.
"""

from __future__ import annotations

import asyncio
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench.procs import Lockd, start_lockd
from lockd.admin import create_admin_app
from lockd.config import ConfigError, Settings
from lockd.errors import Kind
from tests.browser import chromium
from tests.httpcall import call, lock
from tests.rawhttp import RawResponse, request

FORBIDDEN = Kind.forbidden.value
UNSUPPORTED = Kind.unsupported_media_type.value


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw(
    url: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host_header: str | None = None,
) -> RawResponse:
    host, port = host_port(url)
    return asyncio.run(
        request(host, port, method, path, headers or {}, body, host_header=host_header)
    )


def assert_refused(resp: RawResponse, status: int, kind: str) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    doc = resp.json()
    assert doc["kind"] == kind and doc["value"], doc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Lockd]:
    lockd = start_lockd(tmp_path, "memory")
    try:
        assert lock(lockd.url, "pre-reboot", "node-a", "workers")[0] == 200
        yield lockd
    finally:
        lockd.stop()


def workers(server: Lockd) -> dict[str, Any]:
    status, doc = call(server.admin_url, "GET", "/api/v1/groups/workers")
    assert status == 200, doc
    return doc


def unchanged(server: Lockd) -> None:
    g = workers(server)
    assert (g["paused"], g["slots"], [h["id"] for h in g["holders"]]) == (False, 2, ["node-a"])


# What a browser sends, over a raw socket


def test_dns_rebinding_host_is_refused(server: Lockd) -> None:
    _, port = host_port(server.admin_url)
    for path in ("/api/v1/groups", "/api/v1/groups/workers", "/", "/metrics"):
        resp = raw(server.admin_url, "GET", path, host_header=f"evil.example:{port}")
        assert_refused(resp, 403, FORBIDDEN)
        assert b"node-a" not in resp.body
    for bad in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}",
                f"localhost.evil.example:{port}", f"localhost:{port}@evil.example",
                f"[::1]evil.example:{port}", "", f":{port}"):
        resp = raw(server.admin_url, "POST", "/api/v1/groups/workers/pause",
                   {"Content-Type": "application/json"}, b"{}", host_header=bad)
        assert_refused(resp, 403, FORBIDDEN)
    unchanged(server)
    # the names the listener does serve, on any port: ssh -L 9000:127.0.0.1:8081,
    # kubectl port-forward and published container ports change the port the client sees
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}",
                 "localhost:9000", "127.0.0.1", "[::1]:1"):
        resp = raw(server.admin_url, "GET", "/api/v1/groups", host_header=good)
        assert resp.status == 200, (good, resp.body)
        assert b"node-a" in resp.body


def test_foreign_origin_is_refused(server: Lockd) -> None:
    _, port = host_port(server.admin_url)
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}",
                   f"http://localhost:{port}.evil.example"):
        for method, path, body in (
            ("POST", "/api/v1/groups/workers/pause", b"{}"),
            ("POST", "/api/v1/groups/workers/unlock", b'{"id": "node-a"}'),
            ("GET", "/api/v1/groups", b""),
        ):
            resp = raw(server.admin_url, method, path,
                       {"Origin": origin, "Content-Type": "application/json"}, body)
            assert_refused(resp, 403, FORBIDDEN)
    unchanged(server)
    # the listener's own origin (the status page's fetches) is fine
    resp = raw(server.admin_url, "POST", "/api/v1/groups/workers/pause",
               {"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json"}, b"")
    assert resp.status == 200, resp.body
    assert workers(server)["paused"] is True


def test_state_changes_need_a_json_content_type(server: Lockd) -> None:
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; "
                  "boundary=x", "text/plain; charset=utf-8", "application/jsonx", ""):
        for method, path, body in (
            ("POST", "/api/v1/groups/workers/pause", b"{}"),
            ("POST", "/api/v1/groups/workers/pause", b""),
            ("POST", "/api/v1/groups/workers/unlock", b'{"id": "node-a"}'),
            ("PUT", "/api/v1/groups/workers/slots", b'{"slots": 5}'),
        ):
            headers = {"Content-Type": ctype} if ctype else {}
            if not ctype and not body:
                continue  # no body and no type: what `lockd pause` sends, accepted below
            resp = raw(server.admin_url, method, path, headers, body)
            assert_refused(resp, 415, UNSUPPORTED)
    unchanged(server)
    # declared JSON (any case, with a charset) works; so does no body at all (lockd pause)
    resp = raw(server.admin_url, "PUT", "/api/v1/groups/workers/slots",
               {"Content-Type": "Application/JSON; charset=utf-8"}, b'{"slots": 3}')
    assert resp.status == 200, resp.body
    resp = raw(server.admin_url, "POST", "/api/v1/groups/workers/pause", {}, b"")
    assert resp.status == 200, resp.body
    # reads and unknown routes are not affected
    resp = raw(server.admin_url, "GET", "/api/v1/groups", {"Content-Type": "text/plain"})
    assert resp.status == 200
    resp = raw(server.admin_url, "POST", "/api/v1/nothing", {"Content-Type": "text/plain"}, b"x")
    assert resp.status == 404


# A real browser


ATTACK_PAGE = """<!doctype html>
<html><body>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<form id="plain" method="POST" enctype="text/plain" target="sink1"
      action="ADMIN/api/v1/groups/workers/unlock">
  <input name='{"id": "node-a", "pad": "' value='"}'>
</form>
<form id="urlencoded" method="POST" target="sink2" action="ADMIN/api/v1/groups/workers/pause">
  <input name="really" value="yes">
</form>
<script>
const admin = "ADMIN";
const tries = [
  ["/api/v1/groups/workers/pause",
   {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: "{}"}],
  ["/api/v1/groups/workers/pause", {method: "POST", mode: "no-cors"}],
  ["/api/v1/groups/workers/unlock",
   {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
    body: '{"id": "node-a"}'}],
];
(async () => {
  const results = [];
  for (const [path, init] of tries) {
    try { await fetch(admin + path, init); results.push("sent"); }
    catch (e) { results.push("failed: " + e); }
  }
  document.getElementById("plain").submit();
  setTimeout(() => {
    document.getElementById("urlencoded").submit();
    document.body.setAttribute("data-results", results.join(","));
  }, 200);
})();
</script>
</body></html>
"""


@dataclass
class PageServer:
    url: str
    hits: list[str]


@pytest.fixture
def attack_page(server: Lockd) -> Iterator[PageServer]:
    """A second local HTTP server (another port: another origin) serving ATTACK_PAGE."""
    page = ATTACK_PAGE.replace("ADMIN", server.admin_url).encode()
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield PageServer(f"http://127.0.0.1:{httpd.server_address[1]}/", hits)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cross_site_page_changes_nothing(
    server: Lockd, attack_page: PageServer, tmp_path: Path
) -> None:
    dom = chromium(tmp_path, attack_page.url, "--dump-dom")
    assert "/" in attack_page.hits
    match = re.search(r'data-results="([^"]*)"', dom)
    assert match is not None, dom[-2000:]
    assert match.group(1) == "sent,sent,sent", match.group(1)  # the browser did send them
    unchanged(server)
    # and lockd saw them: refused, logged (rate-limited) without a traceback
    server.wait_for_output("refused")
    out = server.proc.output() if server.proc else ""
    assert "Traceback" not in out


def test_rebound_name_cannot_read_the_status_page(server: Lockd, tmp_path: Path) -> None:
    """DNS rebinding: rebind.test resolves to the admin listener; the page at that name is
    the attacker's origin, so it must get nothing (today's page would list the holders)."""
    host, port = host_port(server.admin_url)
    dom = chromium(tmp_path, f"http://rebind.test:{port}/", "--dump-dom",
                   resolver_rules=f"MAP rebind.test {host}")
    assert "node-a" not in dom
    assert FORBIDDEN in dom  # the JSON refusal, shown as text
    # the same page under the listener's own name works (the status page test covers more)
    dom = chromium(tmp_path, f"http://127.0.0.1:{port}/", "--dump-dom")
    assert 'data-holder="node-a"' in dom


# The allow-lists (admin.allowed_hosts, admin.allowed_origins)


@dataclass(frozen=True)
class AllowSettings(Settings):
    """Settings with the two allow-list fields (the lead adds them to lockd/config.py)."""

    admin_allowed_hosts: tuple[str, ...] = ("lockd.example", "ops.example:9000", "[fd00::7]")
    admin_allowed_origins: tuple[str, ...] = ("https://ops.example",)


async def test_allow_lists_are_configurable(aiohttp_server: Any) -> None:
    admin = await aiohttp_server(create_admin_app(AllowSettings(), web.Application()))
    port = admin.port
    # a broken entry is a configuration error, named
    for bad in ({"admin_allowed_hosts": ("lockd.example:http",)},
                {"admin_allowed_origins": ("lockd.example",)}):
        with pytest.raises(ConfigError, match=next(iter(bad)).replace("_", ".", 1)):
            create_admin_app(AllowSettings(**bad), web.Application())

    async def get(host: str | None = None, origin: str | None = None) -> int:
        headers = {"Origin": origin} if origin else {}
        resp = await request(admin.host, admin.port, "GET", "/healthz", headers, b"",
                             host_header=host)
        return resp.status

    # defaults still hold
    assert await get(f"127.0.0.1:{port}") == 200
    assert await get(f"localhost:{port}") == 200
    # configured: a name alone allows it on any port (or none: a proxy on 80/443); with a
    # port, that port only
    assert await get("lockd.example") == 200
    assert await get(f"lockd.example:{port}") == 200
    assert await get("lockd.example:8443") == 200
    assert await get("ops.example:9000") == 200
    assert await get("ops.example:9001") == 403
    assert await get("ops.example") == 403
    assert await get("[fd00::7]:8081") == 200
    assert await get("[fd00::8]:8081") == 403
    assert await get("evil.example") == 403
    # origins: the request's own (scheme-less match of Host) and the configured ones
    assert await get("lockd.example", "https://lockd.example") == 200
    assert await get("lockd.example", "https://ops.example") == 200
    assert await get("lockd.example", "https://OPS.example/") == 200
    assert await get("lockd.example", "http://ops.example") == 403  # another scheme
    assert await get("lockd.example", "https://evil.example") == 403
    assert await get(f"127.0.0.1:{port}", "https://lockd.example") == 403


def test_openapi_documents_403_and_415() -> None:
    import json

    from lockd.admin import OPENAPI

    doc = json.loads(OPENAPI.read_text())
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "403" in codes, (method, path)
            if method in ("post", "put", "delete"):
                assert "415" in codes, (method, path)
