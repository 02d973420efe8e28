"""Opaque page tokens: clients pass back what they were given; a tampered token is a clear error.

A token is ``base64url(JSON position) "." base64url(tag)``, the tag an HMAC-SHA256 (128 bits kept)
of the position under the service's page-token key (``emr_runtime.keys.page_token_purpose``, shared
by its replicas). ``PageTokens.decode`` checks the tag before it parses anything: a forged, altered
or truncated token never reaches the code that reads a position, and is INVALID_ARGUMENT naming
the field. The ``position_*`` helpers read a position's members with the same error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from emr_runtime.errors import FieldViolation, InvalidArgumentError

# Tokens this service issues are short; anything longer was not issued here.
MAX_PAGE_TOKEN_LENGTH = 1024
TAG_BYTES = 16
_SEPARATOR = "."
_NOT_ISSUED = "not a page token this service issued (altered, truncated or forged)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _refused(field: str) -> InvalidArgumentError:
    return InvalidArgumentError([FieldViolation(field, _NOT_ISSUED)])


class PageTokens:
    """Issues and verifies the page tokens of one service."""

    def __init__(self, key: bytes) -> None:
        if len(key) < TAG_BYTES:
            raise ValueError("a page-token key has at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "PageTokens(<key>)"

    def _tag(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()[:TAG_BYTES])

    def encode(self, position: dict[str, Any]) -> str:
        body = _b64(json.dumps(position, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}{_SEPARATOR}{self._tag(body)}"

    def decode(self, token: str, field: str = "page_token") -> dict[str, Any] | None:
        """The position of a token this service issued, None for the first page (no token)."""
        if not token:
            return None
        if len(token) > MAX_PAGE_TOKEN_LENGTH or not token.isascii():
            raise _refused(field)
        body, separator, tag = token.partition(_SEPARATOR)
        if not separator or not hmac.compare_digest(tag, self._tag(body)):
            raise _refused(field)
        try:
            position = json.loads(_unb64(body))
        except (binascii.Error, ValueError, RecursionError) as error:
            raise _refused(field) from error
        if not isinstance(position, dict):
            raise _refused(field)
        return position


def position_int(position: dict[str, Any], name: str, minimum: int = 0, field: str = "page_token") -> int:
    """The whole number ``name`` of a position (at least ``minimum``)."""
    value = position.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _refused(field)
    return value


def position_str(position: dict[str, Any], name: str, field: str = "page_token") -> str:
    value = position.get(name)
    if not isinstance(value, str):
        raise _refused(field)
    return value


def position_time(position: dict[str, Any], name: str, field: str = "page_token") -> datetime:
    """The ISO 8601 time ``name`` of a position, with its time zone."""
    try:
        value = datetime.fromisoformat(position_str(position, name, field))
    except ValueError as error:
        raise _refused(field) from error
    if value.tzinfo is None:
        raise _refused(field)
    return value


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    if requested < 0 or requested > maximum:
        raise InvalidArgumentError([FieldViolation(field, f"must be between 0 and {maximum}")])
    return requested or default
