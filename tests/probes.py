"""Watching what a backend does, on the real backend: how often it is asked to read."""

from __future__ import annotations

import pytest

from lockd.backends.base import Backend, Version


def count_reads(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every key ``backend.get`` is called with, from now on (the real get runs)."""
    read = backend.get
    reads: list[str] = []

    async def counted_get(key: str) -> tuple[bytes | None, Version]:
        reads.append(key)
        return await read(key)

    monkeypatch.setattr(backend, "get", counted_get)
    return reads
