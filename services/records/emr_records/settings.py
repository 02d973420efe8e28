"""Settings of the records service (environment variables prefixed RECORDS_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emr_runtime.fieldcrypt import FieldEncryptionSettings
from emr_runtime.settings import ServiceSettings


class RecordsSettings(ServiceSettings, FieldEncryptionSettings):
    model_config = SettingsConfigDict(env_prefix="RECORDS_", extra="ignore", frozen=True)

    grpc_port: int = Field(8052, ge=0, le=65535)
    metrics_port: int = Field(9452, ge=0, le=65535)
    mongodb_database: str = Field("emr_records", min_length=1)
    identity_target: str = Field("127.0.0.1:8051", description="host:port of the identity service")
    audit_target: str = Field("127.0.0.1:8053", description="host:port of the audit service")
    change_settle_seconds: float = Field(
        5.0, gt=0, description="How long a hole in the change feed may stay open before it is skipped"
    )
    access_cache_seconds: float = Field(
        30.0,
        ge=0,
        le=300,
        description=(
            "How long an answer of identity's CheckAccess is reused: a revoked or ended grant or referral "
            "stops opening data within this time (answers that open nothing, or that an emergency access "
            "opened, are never reused; 0 reuses none)"
        ),
    )
    code_lists_dir: Path | None = Field(
        None,
        description=(
            "Directory of national code lists (<name>.csv) that replace the shipped lists of the same name; "
            "read at start"
        ),
    )
    # Switches for measuring what the cross-cutting features cost (bench/records_speed.py); a
    # production deployment never turns them off.
    verify_patients: bool = Field(True, description="Check with identity that a resource's patient exists")
    audit_enabled: bool = Field(True, description="Record every access in the audit log")
