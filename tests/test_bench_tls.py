"""bench/tls.py: its parsing and summary, and one short real run against lockd's native TLS.

The short run is the check that matters: every mode must be what its name says (the probe on
lockd's own server context counts each request's TLS version and whether it resumed) and
every answer the 423 of a full group, or the run fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import tls
from bench.procs import REPO, find_binary

AB_OUTPUT = """\
Server Software:
Server Hostname:        127.0.0.1
Server Port:            40123
SSL/TLS Protocol:       TLSv1.3,TLS_AES_256_GCM_SHA384,256,256
Server Temp Key:        X25519 253 bits

Complete requests:      1234
Failed requests:        2
Non-2xx responses:      1230
Requests per second:    246.80 [#/sec] (mean)
"""


def test_ab_output_counts_every_answer_that_is_not_a_refusal_as_unexpected() -> None:
    complete, unexpected, protocol = tls.parse_ab(AB_OUTPUT)
    # 2 failed, and 4 answers that were 2xx/3xx where every one should have been 423.
    assert (complete, unexpected, protocol) == (1234, 6, "TLSv1.3,TLS_AES_256_GCM_SHA384,256,256")
    plain = AB_OUTPUT.replace("SSL/TLS Protocol:       TLSv1.3,TLS_AES_256_GCM_SHA384,256,256\n",
                              "").replace("Non-2xx responses:      1230\n", "")
    assert tls.parse_ab(plain) == (1234, 1236, "")


def _run(rps: dict[str, float]) -> dict[str, dict[str, float]]:
    return {m.name: {"rps": rps.get(m.name, 100.0), "requests": 500, "unexpected": 0,
                     "server_ms_per_request": 1000 / rps.get(m.name, 100.0),
                     "load_cpu_use": 0.5} for m in tls.MODES}


def test_summary_takes_each_ratio_within_its_run_and_medians_over_runs() -> None:
    res = {"runs": [_run({"keepalive-http": 1000, "full-tls13": 100}),
                    _run({"keepalive-http": 500, "full-tls13": 100}),
                    _run({"keepalive-http": 2000, "full-tls13": 400})]}
    rows = {r["mode"]: r for r in tls.summary(res)}
    full = rows["full-tls13"]
    assert full["x_keepalive_runs"] == [0.1, 0.2, 0.2] and full["x_keepalive"] == 0.2
    assert full["rps"] == 100 and full["rps_runs"] == [100, 100, 400]
    assert full["ms_cpu"] == 10.0
    assert rows["keepalive-http"]["x_keepalive"] == 1.0
    assert "| full-tls13 | ab | 100 (100, 100, 400) | 0.20 (0.10, 0.20, 0.20)" in tls.table(
        list(rows.values()))


def test_the_wrk_configuration_pins_one_tls_version(tmp_path: Path) -> None:
    text = tls.openssl_conf(tmp_path, "1.2").read_text()
    assert "MinProtocol = TLSv1.2" in text and "MaxProtocol = TLSv1.2" in text


def test_a_short_run_measures_every_mode_as_named(tmp_path: Path) -> None:
    for tool, package in (("wrk", "wrk"), ("ab", "apache2-utils"), ("openssl", "openssl")):
        try:
            find_binary(tool, package)
        except Exception as exc:  # under CI a missing tool fails, as a missing server does
            pytest.fail(str(exc))
    out = tmp_path / "tls.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.tls", "--runs", "1", "--duration", "1",
         "--connections", "4", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, report
    res = json.loads(out.read_text())
    rows = {r["mode"]: r for r in res["summary"]}
    assert set(rows) == {m.name for m in tls.MODES}, report
    assert all(r["unexpected"] == 0 and r["rps"] > 0 for r in rows.values()), report
    # What the probe saw: full handshakes where ab ran, resumed ones where wrk reconnected.
    checks = res["checks"]
    assert checks["full-tls12"].get("TLSv1.2 full", 0) > 0, report
    assert checks["full-tls13"].get("TLSv1.3 full", 0) > 0, report
    assert "TLSv1.3 resumed" not in checks["full-tls13"], report
    assert checks["resumed-tls12"].get("TLSv1.2 resumed", 0) > 0, report
    assert checks["resumed-tls13"].get("TLSv1.3 resumed", 0) > 0, report
    assert all(r["ms_cpu"] > 0 for r in rows.values()), report
