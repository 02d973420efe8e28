"""Settings common to every gRPC service, read from environment variables (pydantic-settings).

Each service subclasses ``ServiceSettings`` with its own prefix (``IDENTITY_``, ``RECORDS_`` ...).
Platform-wide values (``MONGODB_URI``, ``LOG_LEVEL``) carry no prefix, so one variable points
every service at the same MongoDB.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MONGODB_URI = "mongodb://127.0.0.1:27017/"


class ServiceSettings(BaseSettings):
    """Base of every service's settings; subclasses set ``env_prefix`` and their own defaults."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    listen_host: str = Field("127.0.0.1", description="Address the gRPC server binds to")
    grpc_port: int = Field(8051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 turns it off"
    )
    mongodb_database: str = Field("emr", min_length=1, description="Database owned by this service")
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="How long in-flight calls may run after SIGTERM"
    )
    mongodb_uri: str = Field(
        DEFAULT_MONGODB_URI,
        validation_alias=AliasChoices("MONGODB_URI"),
        description="MongoDB connection string shared by all services",
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL"))
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plaintext port serving grpc.health.v1 only (the kubelet's gRPC probe speaks no TLS); 0: off",
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request or response message, in bytes"
    )
    default_deadline_seconds: float = Field(
        30.0, gt=0, description="Deadline of an incoming unary call whose client sent none"
    )
    stream_default_deadline_seconds: float = Field(
        3600.0, gt=0, description="Deadline of an incoming server stream whose client sent none"
    )
    rate_limit_per_second: float = Field(
        1000.0, ge=0, description="Calls a second one client application may make (per replica); 0: no limit"
    )
    rate_limit_burst: int = Field(
        2000, ge=1, description="Calls a client application may save up and make at once"
    )
    # Sized to what a replica serves: one replica answers about 450 identity GetPatient a second
    # (2 cores, bench/security_cost.py), its costliest common read. So an address may make about
    # twice what one replica can serve (the same as one client application may): a legitimate
    # address (a hospital's NAT with several apps) is never refused while the replica could still
    # serve it, and a stranger's flood beyond that is refused before its token is even parsed (a
    # failed authentication counts as 20 calls, so a stranger gets 50 a second: see
    # emr_runtime.guard.PeerRateLimitInterceptor, which also exempts platform components).
    peer_rate_limit_per_second: float = Field(
        1000.0,
        ge=0,
        description="Calls a second one peer address may make (per replica), before authentication; "
        "about twice what a replica serves (GetPatient ~450/s); platform components exempt; 0: no limit",
    )
    peer_rate_limit_burst: int = Field(
        2000, ge=1, description="Calls a peer address may save up and make at once"
    )
