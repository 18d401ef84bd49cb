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


def _json_only(body: bytes) -> tuple[str, str] | tuple[Kind, str]:
    """parse_body's answer as the stdlib's json alone gives it (the reference)."""
    from lockd import fleetlock

    real = fleetlock.orjson.loads

    def refuse(body: bytes) -> object:
        raise fleetlock.orjson.JSONDecodeError("off", "", 0)

    fleetlock.orjson.loads = refuse  # type: ignore[assignment]
    try:
        return _answer(body)
    finally:
        fleetlock.orjson.loads = real  # type: ignore[assignment]


def _answer(body: bytes) -> tuple[str, str] | tuple[Kind, str]:
    try:
        params = parse_body(body)
    except LockdError as exc:
        return exc.kind, exc.value
    return params.id, params.group


# Bodies json and orjson may read differently: NaN, huge integers and floats, escapes
# (lone surrogates), BOMs, duplicate keys, deep nesting, bytes that are not UTF-8.
_TRICKY = [
    b'{"client_params":{"id":"a","group":"g"},"x":NaN}',
    b'{"client_params":{"id":"a","group":"g"},"x":1' + b"0" * 30 + b"}",
    b'{"client_params":{"id":"a","group":"g"},"x":1e400}',
    b'{"client_params":{"id":"\\ud800","group":"g"}}',
    b'{"client_params":{"id":"\\ud83d\\ude00","group":"g"}}',
    b'\xef\xbb\xbf{"client_params":{"id":"a","group":"g"}}',
    b'{"client_params":{"id":"a","group":"g"},"client_params":{"id":"b","group":"h"}}',
    b'{"client_params":{"id":"a","group":"g"},"x":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"client_params":{"id":"\xed\xa0\x80","group":"g"}}',
    b'{"client_params":{"id":"a\tb","group":"g"}}',
    b' {"client_params":{"id":"a","group":"g"}} ',
    b'{"client_params":{"id":"a","group":"g"}}x',
]


@pytest.mark.parametrize("body", _TRICKY)
def test_orjson_first_answers_as_json_alone_would(body: bytes) -> None:
    """parse_body tries orjson, then json: the answer (params or {kind, value}) is the
    one json alone gives, on the inputs where the two parsers differ."""
    assert _answer(body) == _json_only(body)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda id_, group, extra: json.dumps(
                {"client_params": {"id": id_, "group": group}, "x": extra}
            ).encode(),
            st.one_of(st.text(max_size=5), st.integers()), st.sampled_from(["g", "", "a b"]),
            _json_values,
        ),
    )
)
def test_orjson_first_answers_as_json_alone_would_on_any_body(body: bytes) -> None:
    assert _answer(body) == _json_only(body)


@pytest.mark.parametrize(("path", "expected"), [
    ("/v1/pre-reboot", ("", "pre-reboot")),
    ("//v1/steady-state", ("", "steady-state")),
    ("/t/abc/v1/pre-reboot", ("/t/abc", "pre-reboot")),
    ("/v1/pre-reboot\n", None), ("/v1/pre-reboot/", None), ("/v2/pre-reboot", None),
    ("/healthz", None),
])
def test_route_names_each_fleetlock_path_and_only_those(path: str, expected: object) -> None:
    from lockd.fleetlock import route

    assert route(path) == expected
    assert route(path) == expected  # memoised: the same answer the second time
