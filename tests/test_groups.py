"""One rule for group names, everywhere: matched in full, and never an alias of another."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockd.config import ConfigError, load
from lockd.errors import Kind, LockdError
from lockd.fleetlock import parse_body
from lockd.groups import MAX_GROUP_LENGTH, is_group_name
from lockd.layouts import LAYOUTS


@pytest.mark.parametrize("name", ["default", "workers", "a.b-c", "A9", "x" * MAX_GROUP_LENGTH])
def test_good_names(name: str) -> None:
    assert is_group_name(name)


@pytest.mark.parametrize(
    "name",
    # "workers\n" passed a $-anchored pattern and became a separate semaphore; "." and ".."
    # are cleaned out of etcd v2 paths and would alias the parent's keys.
    ["workers\n", "\nworkers", ".", "..", "", "a b", "a/b", "a_b", "x" * (MAX_GROUP_LENGTH + 1),
     "ünï"],
)
def test_bad_names_are_refused_by_the_parser_and_the_config(name: str) -> None:
    assert not is_group_name(name)
    body = json.dumps({"client_params": {"id": "n", "group": name}}).encode()
    with pytest.raises(LockdError) as err:
        parse_body(body)
    assert err.value.kind is Kind.invalid_group
    with pytest.raises(ConfigError, match=r"lock\.groups"):
        load(environ={}, overrides={"lock.groups": [{"name": name, "slots": 1}]})


@given(st.from_regex(r"[a-zA-Z0-9.-]{1,40}", fullmatch=True).filter(is_group_name))
def test_every_valid_name_round_trips_through_every_layout(name: str) -> None:
    for layout_class in LAYOUTS.values():
        layout = layout_class()
        assert layout.group_of(layout.key(name)) == name, layout.name


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"])
def test_a_body_reads_in_every_encoding_json_reads(encoding: str) -> None:
    """parse_body skips json's encoding detection for plain UTF-8 only; every other encoding
    json.loads(bytes) accepts still parses the same."""
    text = '{"client_params": {"id": "n\u00e9ud-1", "group": "workers"}}'
    params = parse_body(text.encode(encoding))
    assert (params.id, params.group) == ("n\u00e9ud-1", "workers")


@pytest.mark.parametrize("body", [b"{", b"{\x00", b'{"client_params": "\xff"}', b""])
def test_a_body_that_is_not_json_is_invalid(body: bytes) -> None:
    with pytest.raises(LockdError) as err:
        parse_body(body)
    assert err.value.kind is Kind.invalid_body
