"""Settings of the sync service (environment variables prefixed SYNC_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emr_runtime.settings import ServiceSettings


class SyncSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SYNC_", extra="ignore", frozen=True)

    grpc_port: int = Field(50054, ge=0, le=65535)
    metrics_port: int = Field(9454, ge=0, le=65535)
    mongodb_database: str = Field("emr_sync", min_length=1)
    records_target: str = Field("127.0.0.1:50052", description="host:port of the records service")
    national_url: str = Field("http://127.0.0.1:8090", description="Base URL of the national system's API")
    poll_interval_seconds: float = Field(1.0, gt=0, description="Pause between feed polls when idle")
    batch_size: int = Field(100, ge=1, le=1000, description="Changes taken and deliveries sent per round")
    http_timeout_seconds: float = Field(
        10.0, gt=0, description="Deadline of one delivery to the national system"
    )
    max_retry_delay_seconds: float = Field(300.0, gt=0, description="Longest wait between two attempts")
