"""Settings of the audit service (environment variables prefixed AUDIT_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emr_runtime.settings import ServiceSettings


class AuditSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore", frozen=True)

    grpc_port: int = Field(50053, ge=0, le=65535)
    metrics_port: int = Field(9453, ge=0, le=65535)
    mongodb_database: str = Field("emr_audit", min_length=1)
