"""Public mode behind a real haproxy (``option forwardfor``): the abuse limits count each
client by the address haproxy saw, not by haproxy's, and a client cannot pick its own
address with a forged X-Forwarded-For."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import Lockd, Proc, find_binary, free_port, wait_for_port
from lockd.tenancy import new_token
from tests.test_public import H, public_env

CONFIG = """\
global
  maxconn 256
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend public
  bind 127.0.0.1:{port}
  option forwardfor
  default_backend lockd
backend lockd
  server lockd 127.0.0.1:{lockd_port}
"""


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[int]:
    binary = find_binary("haproxy", "haproxy")
    server = Lockd(tmp_path, "--backend", "memory://",
                   env=public_env(LOCKD_PUBLIC__TRUSTED_PROXIES="127.0.0.1")).start()
    port = free_port()
    lockd_port = int(server.url.rsplit(":", 1)[1])
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, lockd_port=lockd_port))
    proxy = Proc([binary, "-db", "-f", str(config)], tmp_path / "haproxy.log").start()
    try:
        wait_for_port(port, proc=proxy.proc)
        yield port
    finally:
        proxy.stop()
        server.stop()


def create(port: int, source: str, forged: str | None = None) -> int:
    """A new tenant's first pre-reboot, sent from the loopback address ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    headers = dict(H)
    if forged:
        headers["X-Forwarded-For"] = forged
    body = json.dumps({"client_params": {"id": "a", "group": "g"}})
    try:
        conn.request("POST", f"/t/{new_token()}/v1/pre-reboot", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_limits_count_the_client_haproxy_saw(proxied: int) -> None:
    answers = [create(proxied, "127.0.0.2") for _ in range(25)]
    assert answers[:20] == [200] * 20 and set(answers[20:]) == {429}
    # Another client behind the same proxy has its own budget.
    assert create(proxied, "127.0.0.3") == 200


def test_a_forged_forwarded_for_does_not_help(proxied: int) -> None:
    answers = [create(proxied, "127.0.0.4", forged=f"203.0.113.{i}") for i in range(25)]
    assert answers[:20] == [200] * 20 and set(answers[20:]) == {429}
