"""Settings of the identity service (environment variables prefixed IDENTITY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emr_runtime.fieldcrypt import FieldEncryptionSettings
from emr_runtime.settings import ServiceSettings


class IdentitySettings(ServiceSettings, FieldEncryptionSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", frozen=True)

    grpc_port: int = Field(8051, ge=0, le=65535)
    metrics_port: int = Field(9451, ge=0, le=65535)
    mongodb_database: str = Field("emr_identity", min_length=1)
    audit_target: str = Field("127.0.0.1:8053", description="host:port of the audit service")
    change_settle_seconds: float = Field(
        5.0, gt=0, description="How long a hole in the patient change feed may stay open before it is skipped"
    )
    emergency_access_hours: float = Field(
        4.0, gt=0, le=24, description="How long a declared emergency access (break the glass) lasts"
    )
