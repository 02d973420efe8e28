"""Settings of the national emulator (environment variables prefixed NATIONAL_EMULATOR_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NATIONAL_EMULATOR_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to")
    port: int = Field(8090, ge=1, le=65535)
    log_level: str = Field("info")
    client_id: str = Field(
        "emr-platform", description="The shared development OAuth2 client (its tokens: any facility)"
    )
    client_secret: str = Field("dev-secret", description="That client's secret")
    facility_clients_file: str = Field(
        "",
        description='JSON {"<facility>": {"client_id", "client_secret"}}: clients whose tokens are bound '
        "to that facility (403 for another's claims)",
    )
    facility_certificates_dir: str = Field(
        "", description="Folder of <facility>.cert.pem: the certificates claims' signatures are checked with"
    )
    token_ttl_seconds: int = Field(3600, ge=1, description="Lifetime of issued access tokens")
    code_lists_dir: Path | None = Field(
        None,
        description="Folder of code list CSV files replacing the shipped national lists file by file "
        "(the same format as RECORDS_CODE_LISTS_DIR); strict checks read coded columns against them",
    )
    claim_validation: Literal["strict", "basic"] = Field(
        "strict",
        description="strict: /claims checks every field of Decision 130 (emr_claims) and answers field errors; "
        "basic: only the envelope and a few XML1 fields",
    )
