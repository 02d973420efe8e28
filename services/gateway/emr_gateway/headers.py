"""The HTTP headers the gateway copies into gRPC metadata, and what each may hold.

gRPC metadata values are printable ASCII (space to tilde); a header the gateway forwarded with
anything else would fail inside gRPC, and a long one would cost every service on the way. So every
forwarded header is checked here first, and a bad one is HTTP 400 naming the header (never echoing
its value: it may be a token).
"""

from __future__ import annotations

# Forwarded header -> most characters it may carry. A JWT of a hospital identity provider is 1-3
# KiB; the services keep 32 characters of a purpose of use.
FORWARDED_HEADER_LIMITS = {
    "Authorization": 8192,
    "X-Purpose-Of-Use": 64,
}


class HeaderError(ValueError):
    """A forwarded header that gRPC could not carry; the message names the header."""

    def __init__(self, header: str, limit: int) -> None:
        super().__init__(
            f"header {header} must be printable ASCII (space to tilde), at most {limit} characters"
        )
        self.header = header


def checked_header(header: str, value: str) -> str:
    """``value`` when the forwarded ``header`` may carry it, else HeaderError. Header values arrive
    decoded as Latin-1: any byte over 0x7E is a character that is not ASCII."""
    limit = FORWARDED_HEADER_LIMITS[header]
    if len(value) > limit or not (value.isascii() and value.isprintable()):
        raise HeaderError(header, limit)
    return value
