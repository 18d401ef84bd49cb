"""lockd.store: which layout a URL names, and the rest of the URL left as it was."""

from __future__ import annotations

import pytest

from lockd.backends import InvalidBackendURL
from lockd.store import open_store, split_layout


@pytest.mark.parametrize(
    ("url", "backend_url", "layout"),
    [
        # Python's urlunsplit would drop the empty authority of these: they must pass as-is.
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db", "native"),
        ("sqlite:////tmp/four.db", "sqlite:////tmp/four.db", "native"),
        ("memory://", "memory://", "native"),
        ("unix:///run/r.sock?db=1", "unix:///run/r.sock?db=1", "native"),
        ("etcd://h:2379?layout=airlock&timeout=1", "etcd://h:2379?timeout=1", "airlock"),
        ("etcd://h:2379?layout=AIRLOCK", "etcd://h:2379", "airlock"),
        ("etcd://h:2379", "etcd://h:2379", "native"),
        ("etcd2://h:2379?layout=locksmith", "etcd2://h:2379", "locksmith"),
        ("etcd2://h:2379", "etcd2://h:2379", "locksmith"),
    ],
)
def test_split_layout(url: str, backend_url: str, layout: str) -> None:
    assert split_layout(url) == (backend_url, layout)


@pytest.mark.parametrize(
    "url", ["redis://h/0?layout=airlock", "etcd2://h:2379?layout=native", "etcd://h?layout=x"]
)
def test_a_layout_the_store_cannot_hold_is_refused(url: str) -> None:
    with pytest.raises(InvalidBackendURL, match="layout="):
        split_layout(url)


def test_open_store_pairs_backend_and_layout() -> None:
    store = open_store("sqlite:////tmp/lockd-test-never-opened.db")
    assert (store.backend.scheme, store.layout.name) == ("sqlite", "native")
    assert "native layout" in store.describe()
