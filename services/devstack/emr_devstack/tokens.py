"""Development tokens: the published development key (emr_runtime.auth.dev_private_key) as the
JWKS file and service key of the local platform, and bearer tokens signed with it for `make up`
users (``python -m emr_devstack issue-token``), tests and benches. Never for production: anyone can
derive the key."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from emr_runtime.auth import (
    AUTHORIZATION_KEY,
    DEV_ISSUER,
    SERVICE_ROLES,
    AuthSettings,
    ServiceToken,
    dev_private_key,
    key_thumbprint,
    public_jwk,
    sign_token,
)
from emr_runtime.caller import PURPOSE_OF_USE_KEY
from emr_runtime.policy import ADMIN, ROLES

JWKS_FILE = "dev-jwks.json"
SERVICE_KEY_FILE = "dev-service-key.pem"
AUDIENCE = AuthSettings.model_fields["audience"].default
SERVICE_ISSUER = AuthSettings.model_fields["service_issuer"].default
DEFAULT_LIFETIME_SECONDS = 8 * 3600


def write_dev_keys(run_dir: Path) -> tuple[Path, Path]:
    """The JWKS file every service trusts and the key platform services sign with, in ``run_dir``."""
    key = dev_private_key()
    jwks, pem = run_dir / JWKS_FILE, run_dir / SERVICE_KEY_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    jwks.write_text(json.dumps({"keys": [public_jwk(key, key_thumbprint(key))]}, indent=2))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pem.chmod(0o600)
    return jwks, pem


def issue_token(
    subject: str,
    facility_code: str = "",
    roles: Sequence[str] = (ADMIN,),
    client_application: str = "emr-dev",
    lifetime_seconds: float = DEFAULT_LIFETIME_SECONDS,
    **claims: Any,
) -> str:
    """A development bearer token; the platform service roles get the service issuer."""
    key = dev_private_key()
    issuer = SERVICE_ISSUER if set(roles) & SERVICE_ROLES else DEV_ISSUER
    body: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": subject,
        "roles": list(roles),
        "azp": client_application,
        **claims,
    }
    if facility_code:
        body["facility"] = facility_code
    return sign_token(key, key_thumbprint(key), body, lifetime_seconds)


def caller_metadata(
    actor_id: str, facility_code: str = "", purpose_of_use: str = "", role: str = ADMIN
) -> list[tuple[str, str]]:
    """gRPC metadata of a caller: a development token for these claims and the declared purpose."""
    pairs = [(AUTHORIZATION_KEY, f"Bearer {issue_token(actor_id, facility_code, (role,))}")]
    if purpose_of_use:
        pairs.append((PURPOSE_OF_USE_KEY, purpose_of_use))
    return pairs


def _with_token(details: grpc.aio.ClientCallDetails, authorization: str) -> grpc.aio.ClientCallDetails:
    """The call's details with ``authorization`` added unless the call carries a token."""
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if not metadata.get_all(AUTHORIZATION_KEY):
        metadata.add(AUTHORIZATION_KEY, authorization)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._authorization), request)


# grpc.aio registers an interceptor for one kind of call only: streams need their own.
class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._authorization), request)


def dev_channel(
    target: str,
    subject: str = "dev-admin",
    credentials: grpc.ChannelCredentials | None = None,
    **options: Any,
) -> grpc.aio.Channel:
    """A channel whose calls act as a development admin unless they carry their own token; mutual
    TLS with ``credentials`` (see ``DevCertificates.dev_channel``)."""
    token = issue_token(subject, roles=(ADMIN,))
    interceptors = [_UnaryToken(f"Bearer {token}"), _StreamToken(f"Bearer {token}")]
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, interceptors=interceptors, **options)
    return grpc.aio.insecure_channel(target, interceptors=interceptors, **options)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emr_devstack issue-token",
        description="Print a development bearer token (signed with the published dev key).",
    )
    parser.add_argument("--facility", default="", help="facility code (mã cơ sở KCB), e.g. 79001")
    parser.add_argument("--role", action="append", choices=sorted(ROLES), required=True, help="repeatable")
    parser.add_argument("--subject", default="dev-user", help="sub: the user or application")
    parser.add_argument("--client", default="emr-dev", help="azp: the client application")
    parser.add_argument("--minutes", type=float, default=DEFAULT_LIFETIME_SECONDS / 60, help="lifetime")
    args = parser.parse_args(list(argv))
    print(issue_token(args.subject, args.facility, args.role, args.client, args.minutes * 60))
    return 0


def dev_admin_token(subject: str = "dev-admin") -> ServiceToken:
    """A renewing development admin token for ``emr_runtime.channels.create_channel(token=...)``."""
    key = dev_private_key()
    return ServiceToken(subject, ADMIN, key, key_thumbprint(key), DEV_ISSUER, AUDIENCE)
