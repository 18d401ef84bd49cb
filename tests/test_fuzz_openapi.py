"""Both listeners fuzzed from their OpenAPI documents with schemathesis, against a real
``lockd serve``: no 5xx, every answer the documented status and JSON shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bench.procs import Lockd

HERE = Path(__file__).resolve().parent.parent / "lockd"
FLEETLOCK = schemathesis.openapi.from_path(HERE / "openapi-fleetlock.json")
ADMIN = schemathesis.openapi.from_path(HERE / "openapi.json")
# A lock server refuses valid requests by design (423 full): what a client may send is
# checked by every other check, the answer's status, content type and shape.
EXCLUDED = [positive_data_acceptance]
TOKEN = "fuzz-admin-token"
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lockd]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "token").write_text(TOKEN)
    lockd = Lockd(tmp, "--backend", f"sqlite://{tmp / 'l.db'}", "--group", "workers=2",
                  "--default-slots", "3", "--admin-token-file", str(tmp / "token")).start()
    try:
        yield lockd
    finally:
        lockd.stop()
        out = lockd.proc.output()  # type: ignore[union-attr]
        assert "Traceback" not in out, out[-3000:]


@FLEETLOCK.parametrize()
@FUZZ
def test_fleetlock_listener(case: schemathesis.Case, server: Lockd) -> None:
    response = case.call(base_url=server.url.rstrip("/"))
    case.validate_response(response, excluded_checks=EXCLUDED)


@ADMIN.parametrize()
@FUZZ
def test_admin_listener(case: schemathesis.Case, server: Lockd) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = case.call(base_url=server.admin_url.rstrip("/"), headers=auth)
    case.validate_response(response, excluded_checks=EXCLUDED, headers=auth)
