"""Unit tests of the checks of the headers the gateway forwards as gRPC metadata (pure, no I/O)."""

from __future__ import annotations

import pytest

from emr_gateway.headers import FORWARDED_HEADER_LIMITS, HeaderError, checked_header


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Purpose-Of-Use", "TREATMENT"),
        ("X-Purpose-Of-Use", ""),
        ("Authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln"),
        ("Authorization", "Bearer " + "a" * 8185),
        ("X-Purpose-Of-Use", "PAYMENT ~ (#4)"),
    ],
)
def test_printable_ascii_within_the_limit_is_forwarded(header: str, value: str) -> None:
    assert checked_header(header, value) == value


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Purpose-Of-Use", "trị liệu"),
        # How a UTF-8 header arrives: its bytes decoded as Latin-1.
        ("X-Purpose-Of-Use", "trị".encode().decode("latin-1")),
        ("X-Purpose-Of-Use", "TREATMENT\x00"),
        ("X-Purpose-Of-Use", "T" * 65),
        ("X-Purpose-Of-Use", "điều trị"),
        ("X-Purpose-Of-Use", "a\tb"),
        ("Authorization", "Bearer " + "a" * 8186),
        ("Authorization", "Bearer \x7f"),
    ],
)
def test_anything_else_is_refused_naming_the_header_never_the_value(header: str, value: str) -> None:
    with pytest.raises(HeaderError) as caught:
        checked_header(header, value)
    assert caught.value.header == header
    assert header in str(caught.value) and str(FORWARDED_HEADER_LIMITS[header]) in str(caught.value)
    assert value not in str(caught.value)
