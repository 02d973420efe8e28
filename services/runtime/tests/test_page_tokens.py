"""Unit tests of page tokens: they round-trip, they are bound to the service's key, and anything
else (forged, altered, truncated, garbage) is INVALID_ARGUMENT naming the field, before a position
is read."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from emr_runtime.errors import InvalidArgumentError
from emr_runtime.keys import derive_key, page_token_purpose
from emr_runtime.paging import PageTokens, position_int, position_str, position_time

SECRET = b"s" * 32
TOKENS = PageTokens(derive_key(SECRET, page_token_purpose("records")))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def refused_field(call: Any) -> list[str]:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    return [v.field for v in caught.value.violations]


@pytest.mark.parametrize(
    "position",
    [
        {"after": 0},
        {"after": 12345, "patient_id": "patient-1"},
        {"start": "2024-06-15T08:30:00Z", "id": "enc-1", "nested": {"a": [1, 2, None, True]}},
        {"name": "Nguyễn Thị Ngọc Điệp"},
        {},
    ],
)
def test_round_trip(position: dict[str, object]) -> None:
    assert TOKENS.decode(TOKENS.encode(position)) == position


def test_tokens_are_url_safe_and_independent_of_key_order() -> None:
    for size in range(1, 12):
        token = TOKENS.encode({"k": "?" * size + "~>"})
        assert not set(token) & set("=+/")
        assert TOKENS.decode(token) == {"k": "?" * size + "~>"}
    assert TOKENS.encode({"a": 1, "b": 2}) == TOKENS.encode({"b": 2, "a": 1})


def test_empty_token_is_the_first_page() -> None:
    assert TOKENS.decode("") is None


def test_replicas_with_the_same_secret_accept_each_others_tokens() -> None:
    replica = PageTokens(derive_key(SECRET, page_token_purpose("records")))
    assert replica.decode(TOKENS.encode({"after": 7})) == {"after": 7}


@pytest.mark.parametrize(
    "other",
    [
        PageTokens(derive_key(b"t" * 32, page_token_purpose("records"))),  # another deployment
        PageTokens(derive_key(SECRET, page_token_purpose("audit"))),  # another service
    ],
)
def test_a_token_of_another_key_is_refused(other: PageTokens) -> None:
    assert refused_field(lambda: TOKENS.decode(other.encode({"after": 7}))) == ["page_token"]


def _forged(position: Any) -> str:
    """What an attacker writes: the old unsigned form, or a position with a made-up tag."""
    return _b64(json.dumps(position).encode())


_ISSUED = TOKENS.encode({"after": 1})
_BODY, _, _TAG = _ISSUED.partition(".")


@pytest.mark.parametrize(
    "token",
    [
        "garbage!!",
        "a",
        "%%%%",
        _forged({"after": 1}),  # unsigned, as tokens were before
        _forged({"offset": "abc"}) + "." + _TAG,  # a position under another's tag
        _forged({"after": -5}) + "." + _TAG,
        _BODY + ".",  # tag removed
        _BODY,  # separator and tag removed
        _ISSUED[:-3],  # truncated
        _ISSUED[:5],
        _BODY + "." + _TAG[:-1] + ("A" if _TAG[-1] != "A" else "B"),  # tag altered
        _BODY[:-1] + ("A" if _BODY[-1] != "A" else "B") + "." + _TAG,  # position altered
        _ISSUED + "x",
        "." + _TAG,
        "Ä" + _ISSUED,  # not ASCII
        _b64(b"[" * 600),  # deeply nested JSON, unsigned
        TOKENS.encode({"after": 1, "pad": "x" * 2000}),  # longer than any token a service issues
    ],
)
def test_anything_but_an_issued_token_names_the_field(token: str) -> None:
    assert refused_field(lambda: TOKENS.decode(token)) == ["page_token"]


def test_a_custom_field_is_named() -> None:
    assert refused_field(lambda: TOKENS.decode("garbage!!", field="search.page_token")) == [
        "search.page_token"
    ]


def test_signed_garbage_positions_are_refused_when_read() -> None:
    # Only an issued token passes decode; a key leak or a coding slip still meets typed reads.
    odd = TOKENS.decode(TOKENS.encode({"n": -1, "b": True, "s": 5, "t": "yesterday", "naive": "2024-01-01"}))
    assert odd is not None
    assert refused_field(lambda: position_int(odd, "n")) == ["page_token"]
    assert refused_field(lambda: position_int(odd, "b")) == ["page_token"]
    assert refused_field(lambda: position_int(odd, "missing")) == ["page_token"]
    assert refused_field(lambda: position_str(odd, "s")) == ["page_token"]
    assert refused_field(lambda: position_time(odd, "t")) == ["page_token"]
    assert refused_field(lambda: position_time(odd, "naive")) == ["page_token"]
    good = {"n": 3, "s": "x", "t": datetime(2024, 6, 15, 8, 30, tzinfo=UTC).isoformat()}
    assert position_int(good, "n", minimum=1) == 3
    assert position_str(good, "s") == "x"
    assert position_time(good, "t") == datetime(2024, 6, 15, 8, 30, tzinfo=UTC)


def test_a_key_too_short_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        derive_key(b"short", page_token_purpose("records"))
