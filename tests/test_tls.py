"""Native TLS on the FleetLock listener: FleetLock over HTTPS, and SIGHUP swapping the
certificate without closing the listener (a bad pair is refused and the old one kept)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from bench.procs import Lockd, find_binary
from lockd.config import ConfigError, load
from lockd.tenancy import new_token
from tests.test_public import PEPPER, H


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    openssl = find_binary("openssl", "openssl")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
         f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def served(port: int) -> bytes:
    """The certificate the listener presents (DER)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def test_tls_serves_fleetlock_and_reloads_its_certificate_on_sighup(tmp_path: Path) -> None:
    first = make_cert(tmp_path, "first")
    second = make_cert(tmp_path, "second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    config = tmp_path / "lockd.toml"
    config.write_text(
        f'[service]\ntls = true\ntls_cert = "{live_cert}"\ntls_key = "{live_key}"\n'
        '[public]\nenabled = true\n'
    )
    server = Lockd(tmp_path, "--config", str(config), "--backend", "memory://",
                   env={"LOCKD_PUBLIC__PEPPER": PEPPER}).start()
    try:
        assert server.url.startswith("https://")
        port = int(server.url.rsplit(":", 1)[1])
        assert served(port) == der(first[0])
        # A FleetLock request over TLS, verified against the certificate.
        ctx = ssl.create_default_context(cafile=str(first[0]))
        body = json.dumps({"client_params": {"id": "a", "group": "g"}}).encode()
        req = urllib.request.Request(f"{server.url}/t/{new_token()}/v1/pre-reboot",
                                     data=body, headers=H, method="POST")
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200
        # New files, SIGHUP: the next handshake presents the new certificate.
        shutil.copy(second[0], live_cert)
        shutil.copy(second[1], live_key)
        server.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        server.wait_for_output("TLS certificate reloaded")
        assert served(port) == der(second[0])
        # A certificate that does not match its key is refused; the running one stays.
        shutil.copy(first[0], live_cert)
        server.proc.signal(signal.SIGHUP)  # type: ignore[union-attr]
        server.wait_for_output("KEY_VALUES_MISMATCH")
        assert "reload refused" in server.proc.output()  # type: ignore[union-attr]
        assert served(port) == der(second[0])
    finally:
        assert server.stop() == 0


def test_tls_without_files_is_refused_naming_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"service\.tls_cert and service\.tls_key"):
        load(environ={"LOCKD_SERVICE__TLS": "true", "LOCKD_STORAGE__BACKEND": "memory://"})
    cert, key = make_cert(tmp_path, "x")
    other = make_cert(tmp_path, "y")
    with pytest.raises(ConfigError, match="cannot load"):
        load(environ={"LOCKD_SERVICE__TLS": "true", "LOCKD_STORAGE__BACKEND": "memory://",
                      "LOCKD_SERVICE__TLS_CERT": str(cert),
                      "LOCKD_SERVICE__TLS_KEY": str(other[1])})
    s = load(environ={"LOCKD_SERVICE__TLS": "true", "LOCKD_STORAGE__BACKEND": "memory://",
                      "LOCKD_SERVICE__TLS_CERT": str(cert), "LOCKD_SERVICE__TLS_KEY": str(key)})
    assert s.tls and s.tls_cert == str(cert)
