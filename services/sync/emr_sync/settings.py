"""Settings of the sync service (environment variables prefixed SYNC_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from emr_runtime.fieldcrypt import FieldEncryptionSettings
from emr_runtime.settings import ServiceSettings


class SyncSettings(ServiceSettings, FieldEncryptionSettings):
    model_config = SettingsConfigDict(env_prefix="SYNC_", extra="ignore", frozen=True)

    grpc_port: int = Field(8054, ge=0, le=65535)
    metrics_port: int = Field(9454, ge=0, le=65535)
    mongodb_database: str = Field("emr_sync", min_length=1)
    records_target: str = Field("127.0.0.1:8052", description="host:port of the records service")
    identity_target: str = Field("127.0.0.1:8051", description="host:port of the identity service")
    audit_target: str = Field("127.0.0.1:8053", description="host:port of the audit service (denied calls)")
    national_url: str = Field("http://127.0.0.1:8090", description="Base URL of the national system's API")
    national_client_id: str = Field(
        "emr-platform", description="Shared OAuth2 client id (development fallback; see credentials file)"
    )
    national_client_secret: str = Field(
        "dev-secret", description="Shared OAuth2 client secret (development fallback)"
    )
    national_credentials_file: str = Field(
        "",
        description='JSON {"<facility>": {"client_id", "client_secret"}}: each facility\'s own national '
        "client, used for its claims and FHIR deliveries",
    )
    national_shared_client_fallback: bool = Field(
        True,
        description="Facilities missing from the credentials file use the shared client (development); "
        "false: their deliveries are dead-lettered",
    )
    facility_signing_dir: str = Field(
        "",
        description="Folder of <facility>.key.pem + <facility>.cert.pem that sign each facility's claims "
        "(read at start); a claim of a facility without a pair is dead-lettered, never sent unsigned",
    )
    facility_signing_generate: bool = Field(
        False, description="Make a facility's key and self-signed certificate on first use (development)"
    )
    facility_claim_codes: str = Field(
        "",
        description='JSON {"<facility>": "<MA_TTDV>"}: the practising-licence code of each facility\'s head '
        "(or the person authorised to sign its claims); a claim of a facility not listed is dead-lettered",
    )
    national_token_path: str = Field("/oauth/token", description="Token endpoint, relative to the URL")
    poll_interval_seconds: float = Field(1.0, gt=0, description="Pause between feed polls when idle")
    batch_size: int = Field(100, ge=1, le=1000, description="Changes taken per intake round")
    deliveries_per_round: int = Field(
        5000, ge=1, le=20_000, description="Queued deliveries read (one query) per delivery round"
    )
    backlog_metrics_interval_seconds: float = Field(
        5.0, gt=0, description="Pause between refreshes of the backlog gauges (each reads the queue)"
    )
    http_timeout_seconds: float = Field(
        10.0, gt=0, description="Deadline of one delivery to the national system"
    )
    first_retry_delay_seconds: float = Field(1.0, gt=0, description="Wait after a first failed attempt")
    max_retry_delay_seconds: float = Field(300.0, gt=0, description="Longest wait between two attempts")
    default_retry_after_seconds: float = Field(
        5.0, gt=0, description="Wait after HTTP 429 when the answer has no Retry-After"
    )
    concurrency: int = Field(16, ge=1, le=256, description="Deliveries in flight at once per replica")
    partitions: int = Field(
        16, ge=1, le=1024, description="Work partitions (patients hashed); same value on every replica"
    )
    partitions_per_round: int = Field(
        8, ge=1, le=1024, description="Partitions one delivery round leases (two rounds at once per replica)"
    )
    lease_seconds: float = Field(30.0, gt=0, description="Lifetime of a work lease; renewed while working")
    replica_id: str = Field("", description="Name of this replica in leases; empty: host:pid")
    circuit_failure_threshold: int = Field(5, ge=1, description="Failures in a row that open the circuit")
    circuit_open_seconds: float = Field(5.0, gt=0, description="First pause of an open circuit")
    circuit_max_open_seconds: float = Field(300.0, gt=0, description="Longest pause of an open circuit")
