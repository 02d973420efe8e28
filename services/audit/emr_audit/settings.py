"""Settings of the audit service (environment variables prefixed AUDIT_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emr_runtime.fieldcrypt import FieldEncryptionSettings
from emr_runtime.settings import ServiceSettings


class AuditSettings(ServiceSettings, FieldEncryptionSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore", frozen=True)

    grpc_port: int = Field(8053, ge=0, le=65535)
    metrics_port: int = Field(9453, ge=0, le=65535)
    mongodb_database: str = Field("emr_audit", min_length=1)
    signing_key_file: str = Field("", description="PEM (PKCS#8) Ed25519 key that signs checkpoints")
    signing_key_generate: bool = Field(
        False, description="Create signing_key_file when missing (development)"
    )
    # Events after the last checkpoint are linked but unsigned: an export can only call them
    # unproven. Both bounds keep that window small, whichever is reached first.
    checkpoint_every_events: int = Field(200, ge=1, description="Checkpoint after this many new events")
    checkpoint_interval_seconds: float = Field(
        5.0, gt=0, description="Checkpoint this long after the last one when there are new events"
    )
    # Each round reads only the events linked since the last one plus one checkpoint's range (at
    # most 10 000 events), so old events are re-checked a checkpoint at a time, never all at once.
    integrity_check_interval_seconds: float = Field(
        60.0, ge=0, description="Verify new events and one checkpoint's range this often (0: off)"
    )
