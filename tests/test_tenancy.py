"""lockd.tenancy alone: tokens and their checksum, which secrets are refused, the carriers,
and the keyed hashes that are all the store ever sees of a secret."""

from __future__ import annotations

import base64

import pytest

from lockd.errors import Kind, LockdError
from lockd.tenancy import (
    MIN_SECRET_LENGTH,
    TOKEN_PREFIX,
    Keys,
    is_secret,
    new_token,
    redact,
    resolve,
)

PEPPER = b"p" * 32
SECRET = "A" * MIN_SECRET_LENGTH


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_new_tokens_are_prefixed_unique_and_valid() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX) and is_secret(token)


def test_a_mistyped_token_fails_its_checksum() -> None:
    token = new_token()
    body = token[len(TOKEN_PREFIX):]
    for i in range(len(body)):
        for c in "0aZ":
            typo = body[:i] + c + body[i + 1:]
            if typo != body:
                assert not is_secret(TOKEN_PREFIX + typo), (i, c)
    assert not is_secret(token[:-1])
    assert not is_secret(token + "x")


@pytest.mark.parametrize(
    "secret",
    ["", "default", "a" * (MIN_SECRET_LENGTH - 1), "a" * (MIN_SECRET_LENGTH - 1) + "-",
     "a" * 21 + "é", "lockd_" + "a" * 30, "a" * 129],
)
def test_weak_or_malformed_secrets_are_refused(secret: str) -> None:
    assert not is_secret(secret)


def test_secrets_of_22_letters_and_digits_are_accepted() -> None:
    assert is_secret(SECRET) and is_secret("aZ09" * 6)


def test_carriers() -> None:
    token = new_token()
    assert resolve(f"/t/{token}", None, "workers").secret == token
    got = resolve("", basic(token), "workers")
    assert (got.secret, got.carrier, got.group) == (token, "basic", "workers")
    # The password, when the user name is empty (https://:<token>@host/).
    assert resolve("", basic("", token), "workers").secret == token
    # A secret group name at the root is the tenant of that secret, group "default".
    got = resolve("", None, SECRET)
    assert (got.secret, got.carrier, got.group) == (SECRET, "group", "default")
    # The path wins over the Authorization header.
    assert resolve(f"/t/{token}", basic(SECRET), "g").secret == token


def refusal(prefix: str, auth: str | None, group: str) -> tuple[Kind, str]:
    with pytest.raises(LockdError) as info:
        resolve(prefix, auth, group)
    return info.value.kind, info.value.value


def test_every_refused_secret_gets_the_same_answer() -> None:
    answers = {
        refusal("/t/short", None, "g"),
        refusal(f"/t/{new_token()[:-1]}x", None, "g"),
        refusal("/t/a/b", None, "g"),
        refusal("", basic("short"), "g"),
        refusal("", "Basic !!!notbase64", "g"),
        refusal("", None, "default"),
        refusal("", None, "workers"),
    }
    assert len(answers) == 1
    kind, _ = answers.pop()
    assert kind is Kind.invalid_tenant


def test_the_dropped_slash_says_so() -> None:
    kind, value = refusal("/t", None, "g")
    assert kind is Kind.not_found and "trailing slash" in value and "base_url" in value


def test_other_prefixes_are_not_found() -> None:
    assert refusal("/x", None, SECRET)[0] is Kind.not_found


def test_keys_are_keyed_hashes() -> None:
    keys = Keys(PEPPER)
    g = keys.group(SECRET, "workers")
    assert g == keys.group(SECRET, "workers")
    assert g.startswith(keys.tenant(SECRET) + ".")
    assert g != keys.group(SECRET, "db") and g != keys.group(SECRET + "x", "workers")
    assert Keys(b"q" * 32).group(SECRET, "workers") != g
    assert SECRET not in g and "workers" not in g and PEPPER.decode() not in repr(keys)
    with pytest.raises(ValueError):
        Keys(b"short")


def test_redact_hides_a_token_in_a_path() -> None:
    token = new_token()
    assert token not in redact(f"/t/{token}/v1/pre-reboot")
