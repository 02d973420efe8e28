"""Mutual TLS between the platform's processes: one CA, one certificate per service.

A process presents the same certificate as a server (to its callers) and as a client (to its
callees), so each service has one certificate, key and CA bundle, named by platform-wide variables
(``TLS_CA_FILE``, ``TLS_CERT_FILE``, ``TLS_KEY_FILE``). Servers require a client certificate signed
by the CA. With none of the three set, servers and channels speak plaintext (a service image started
alone; tests of the plaintext health port); setting only some of them is refused at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The platform's own processes, by the common name of their certificate (``emr-<component>``, as
# emr_devstack.certs and the chart issue them). The CA must give these names to no one else: a call
# presenting one is trusted to come from the platform (e.g. never limited per peer address).
PLATFORM_COMPONENTS = ("identity", "records", "audit", "sync", "gateway")
PLATFORM_CERTIFICATE_NAMES = frozenset(f"emr-{component}" for component in PLATFORM_COMPONENTS)


def client_certificate_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The common name of the certificate the caller presented (verified against the platform CA
    by the TLS handshake); empty on a plaintext port."""
    name = next(iter(context.auth_context().get("x509_common_name") or ()), b"")
    return name.decode(errors="replace")


def from_platform_component(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return client_certificate_name(context) in PLATFORM_CERTIFICATE_NAMES


class TlsSettings(BaseSettings):
    """Where this process finds its certificate, key and the platform CA (PEM files)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    ca_file: str = Field(
        "", validation_alias=AliasChoices("TLS_CA_FILE"), description="CA bundle that signs peers"
    )
    cert_file: str = Field(
        "", validation_alias=AliasChoices("TLS_CERT_FILE"), description="this process's certificate chain"
    )
    key_file: str = Field(
        "", validation_alias=AliasChoices("TLS_KEY_FILE"), description="this process's private key"
    )

    @model_validator(mode="after")
    def _all_or_none(self) -> TlsSettings:
        given = [bool(self.ca_file), bool(self.cert_file), bool(self.key_file)]
        if any(given) and not all(given):
            # Names only: never echo file contents or paths' secrets into an error.
            raise ValueError("set all of TLS_CA_FILE, TLS_CERT_FILE and TLS_KEY_FILE, or none")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return (
            Path(self.ca_file).read_bytes(),
            Path(self.cert_file).read_bytes(),
            Path(self.key_file).read_bytes(),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: present our certificate, require and verify the caller's."""
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side: verify the server against the CA, present our certificate."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
