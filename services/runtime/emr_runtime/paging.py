"""Opaque page tokens: clients pass back what they were given; a tampered token is a clear error."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from emr_runtime.errors import FieldViolation, InvalidArgumentError

# Tokens this service issues are short; anything longer was not issued here.
MAX_PAGE_TOKEN_LENGTH = 1024


def encode_page_token(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, field: str = "page_token") -> dict[str, Any] | None:
    """The position encoded in a token, None for the first page."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgumentError([FieldViolation(field, "not a token this service issued")])
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as error:
        raise InvalidArgumentError([FieldViolation(field, "not a token this service issued")]) from error
    if not isinstance(position, dict):
        raise InvalidArgumentError([FieldViolation(field, "not a token this service issued")])
    return position


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    if requested < 0 or requested > maximum:
        raise InvalidArgumentError([FieldViolation(field, f"must be between 0 and {maximum}")])
    return requested or default
