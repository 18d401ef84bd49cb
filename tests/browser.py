"""Headless Chromium, as a person's browser, for the tests that look at lockd's pages."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.procs import find_binary

#: Only loopback resolves, so any external asset a page asked for would fail.
AIR_GAPPED = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def chromium(
    tmp: Path, url: str, *mode: str, width: int = 412, height: int = 915,
    resolver_rules: str = AIR_GAPPED,
) -> str:
    """Run headless Chromium on ``url`` once the page's script has run; return stdout."""
    binary = find_binary("chromium", "chromium")
    argv = [
        binary,
        "--headless",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        f"--host-resolver-rules={resolver_rules}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=5000",  # let fetch() and rendering finish before the dump
        *mode,
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
