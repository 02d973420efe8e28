"""Who is calling: read from request metadata. Authentication (JWT) replaces the source of these
values later; every consumer reads them through ``caller_from_metadata`` only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ACTOR_ID_KEY = "x-actor-id"
FACILITY_CODE_KEY = "x-facility-code"
PURPOSE_OF_USE_KEY = "x-purpose-of-use"
ROLE_KEY = "x-actor-role"
CLIENT_APPLICATION_KEY = "x-client-application"
UNKNOWN_ACTOR = "anonymous"


@dataclass(frozen=True)
class Caller:
    """The subject, facility and declared purpose of an incoming call."""

    actor_id: str
    facility_code: str
    purpose_of_use: str
    role: str = ""
    client_application: str = ""


def caller_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
    values = {key: value for key, value in metadata or () if isinstance(value, str)}
    return Caller(
        actor_id=values.get(ACTOR_ID_KEY, "")[:128] or UNKNOWN_ACTOR,
        facility_code=values.get(FACILITY_CODE_KEY, "")[:16],
        purpose_of_use=values.get(PURPOSE_OF_USE_KEY, "")[:32],
        role=values.get(ROLE_KEY, "")[:64],
        client_application=values.get(CLIENT_APPLICATION_KEY, "")[:64],
    )


def caller_metadata(
    actor_id: str, facility_code: str = "", purpose_of_use: str = "", role: str = ""
) -> list[tuple[str, str]]:
    """Outgoing metadata that identifies the caller (for clients: gateway, tests, tools)."""
    pairs = [(ACTOR_ID_KEY, actor_id)]
    if facility_code:
        pairs.append((FACILITY_CODE_KEY, facility_code))
    if purpose_of_use:
        pairs.append((PURPOSE_OF_USE_KEY, purpose_of_use))
    if role:
        pairs.append((ROLE_KEY, role))
    return pairs
