"""Development material of the national connection: each facility's national client (one JSON file
that sync and the emulator both read) and the folder of facilities' claim-signing keys and
certificates (sync makes a facility's pair there on first use, the emulator reads the certificate
there). Development only: the secrets are derived from public names."""

from __future__ import annotations

import json
from pathlib import Path

NATIONAL_CLIENTS_FILE = "dev-national-clients.json"
FACILITY_SIGNING_DIR = "dev-facility-signing"
# Facilities with their own development client (the benches' and the examples' facility and a
# second one, so that a test can submit one facility's claim with the other's token). Every other
# facility's deliveries use the shared development client (SYNC_NATIONAL_SHARED_CLIENT_FALLBACK).
DEV_CLIENT_FACILITIES = ("79001", "79002")


def dev_client(facility_code: str) -> dict[str, str]:
    return {"client_id": f"emr-facility-{facility_code}", "client_secret": f"dev-secret-{facility_code}"}


def write_dev_national_clients(run_dir: Path) -> Path:
    """The clients file (rewritten each time: it is derived) and the signing folder of ``run_dir``."""
    (run_dir / FACILITY_SIGNING_DIR).mkdir(parents=True, exist_ok=True)
    path = run_dir / NATIONAL_CLIENTS_FILE
    path.write_text(json.dumps({code: dev_client(code) for code in DEV_CLIENT_FACILITIES}, indent=2))
    return path


def dev_facility_head_code(facility_code: str) -> str:
    """A made-up practising-licence code (MA_TTDV) of a development facility's head."""
    return f"{facility_code[-3:]:0>6}/BYT-GPHN"


def national_env(run_dir: Path, service: str) -> dict[str, str]:
    """The variables that point sync or the emulator at the development national material."""
    clients, signing = str(run_dir / NATIONAL_CLIENTS_FILE), str(run_dir / FACILITY_SIGNING_DIR)
    if service == "sync":
        return {
            "SYNC_NATIONAL_CREDENTIALS_FILE": clients,
            "SYNC_FACILITY_SIGNING_DIR": signing,
            "SYNC_FACILITY_SIGNING_GENERATE": "true",
            "SYNC_FACILITY_CLAIM_CODES": json.dumps(
                {code: dev_facility_head_code(code) for code in DEV_CLIENT_FACILITIES}
            ),
        }
    if service == "national_emulator":
        return {
            "NATIONAL_EMULATOR_FACILITY_CLIENTS_FILE": clients,
            "NATIONAL_EMULATOR_FACILITY_CERTIFICATES_DIR": signing,
        }
    return {}
