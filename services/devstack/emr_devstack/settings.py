"""Settings of `make up` (python -m emr_devstack): the ports it binds. Tests pick free ports and
ignore these. One variable per port, ``DEVSTACK_<PORT NAME>_PORT``; defaults are ``Ports``'s."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from emr_devstack.stack import Ports, port_variable

PREFIX = "DEVSTACK_"


def _port(default: int, what: str) -> Any:
    return Field(default, ge=1, le=65535, description=what)


class DevstackSettings(BaseSettings):
    """Every port `make up` binds; each field is ``<Ports field>_port``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    mongodb_port: int = _port(Ports.mongodb, "FerretDB's MongoDB port (unused when MONGODB_URI is set)")
    identity_port: int = _port(Ports.identity, "identity gRPC port")
    records_port: int = _port(Ports.records, "records gRPC port")
    audit_port: int = _port(Ports.audit, "audit gRPC port")
    sync_port: int = _port(Ports.sync, "sync gRPC port")
    identity_metrics_port: int = _port(Ports.identity_metrics, "identity /metrics port")
    records_metrics_port: int = _port(Ports.records_metrics, "records /metrics port")
    audit_metrics_port: int = _port(Ports.audit_metrics, "audit /metrics port")
    sync_metrics_port: int = _port(Ports.sync_metrics, "sync /metrics port")
    gateway_metrics_port: int = _port(Ports.gateway_metrics, "gateway /metrics port")
    identity_health_port: int = _port(Ports.identity_health, "identity plaintext health port")
    records_health_port: int = _port(Ports.records_health, "records plaintext health port")
    audit_health_port: int = _port(Ports.audit_health, "audit plaintext health port")
    sync_health_port: int = _port(Ports.sync_health, "sync plaintext health port")
    gateway_port: int = _port(Ports.gateway, "FHIR gateway HTTP port")
    national_emulator_port: int = _port(Ports.national_emulator, "national emulator HTTP port")

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        seen: dict[int, str] = {}
        for name in type(self).model_fields:
            port = getattr(self, name)
            if port in seen:
                raise ValueError(
                    f"{PREFIX}{name.upper()} and {PREFIX}{seen[port].upper()} are both {port}: "
                    "every port of `make up` must differ"
                )
            seen[port] = name
        return self

    def ports(self) -> Ports:
        return Ports(**{f.name: getattr(self, f"{f.name}_port") for f in fields(Ports)})


# The variable the pre-flight check names must be the one this class reads.
assert all(
    f"{PREFIX}{name.upper()}" == port_variable(name.removesuffix("_port"))
    for name in DevstackSettings.model_fields
)
