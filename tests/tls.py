"""Throwaway certificates for the TLS tests (rediss://, rediss+cluster://)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.procs import find_binary


def _openssl(tmp: Path, *args: str) -> None:
    subprocess.run([find_binary("openssl", "openssl"), *args], cwd=tmp, check=True,
                   capture_output=True)


def certificates(tmp: Path) -> None:
    """In ``tmp``: a CA (ca.crt), a certificate for 127.0.0.1 (server.crt/key) and a
    client certificate (client.crt/key), both signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(tmp, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=lockd test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (tmp / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl(tmp, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}")
        extra = ["-extfile", "server.ext"] if name == "server" else []
        _openssl(tmp, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey",
                 "ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extra)
