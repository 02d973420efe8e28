"""Settings of the FHIR gateway (environment variables prefixed GATEWAY_)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to")
    port: int = Field(8080, ge=1, le=65535)
    metrics_port: int = Field(9455, ge=0, le=65535, description="Port of /metrics (0: not served)")
    identity_target: str = Field("127.0.0.1:8051", description="host:port of the identity service")
    records_target: str = Field("127.0.0.1:8052", description="host:port of the records service")
    audit_target: str = Field(
        "127.0.0.1:8053",
        description="host:port of the audit service (the access report of a data-subject export)",
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL"))
