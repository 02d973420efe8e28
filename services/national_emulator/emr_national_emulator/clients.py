"""The portal's OAuth2 clients: the shared development client (any facility), and one client per
facility from a JSON file ``{"<facility_code>": {"client_id": "...", "client_secret": "..."}}``
(the format of sync's SYNC_NATIONAL_CREDENTIALS_FILE), whose tokens are bound to that facility."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from emr_runtime.facility import is_facility_code


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    facility_code: str | None  # None: the shared development client, not bound to a facility


def read_facility_clients(path: str) -> list[Client]:
    """The per-facility clients of ``path`` (empty: none); ValueError naming what is wrong."""
    if not path:
        return []
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"NATIONAL_EMULATOR_FACILITY_CLIENTS_FILE {path}: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of facility code -> {{client_id, client_secret}}")
    clients = []
    for facility, entry in raw.items():
        if not is_facility_code(facility) or not isinstance(entry, dict):
            raise ValueError(f"{path}: {facility!r} must be a 5-character facility code with an object")
        client_id, secret = entry.get("client_id"), entry.get("client_secret")
        if not isinstance(client_id, str) or not client_id or not isinstance(secret, str) or not secret:
            raise ValueError(f"{path}: facility {facility} needs a non-empty client_id and client_secret")
        clients.append(Client(client_id, secret, facility))
    if len({c.client_id for c in clients}) != len(clients):
        raise ValueError(f"{path}: every facility needs its own client_id")
    return clients


def authenticate(clients: list[Client], client_id: str, client_secret: str) -> Client | None:
    """The client these credentials are, compared in constant time; None when none matches."""
    found = None
    for client in clients:
        same_id = secrets.compare_digest(client_id.encode(), client.client_id.encode())
        same_secret = secrets.compare_digest(client_secret.encode(), client.client_secret.encode())
        if same_id and same_secret:
            found = client
    return found
