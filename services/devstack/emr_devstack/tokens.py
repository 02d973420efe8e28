"""Development tokens: the published development keys (emr_runtime.auth.dev_private_key for users'
tokens, dev_service_key for each platform service's own) as the JWKS file and service keys of the
local platform, and bearer tokens signed with them for `make up` users
(``python -m emr_devstack issue-token``), tests and benches. Never for production: anyone can
derive the keys. ``service-jwks`` prints the JWKS of production service keys."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from emr_runtime.auth import (
    AUTHORIZATION_KEY,
    DEV_ISSUER,
    SERVICE_ASSERTED_ROLES,
    SERVICE_ROLES,
    SERVICE_TOKEN_SECONDS,
    AuthSettings,
    ServiceToken,
    dev_private_key,
    dev_service_key,
    key_thumbprint,
    load_private_key,
    public_jwk,
    service_jwk,
    sign_token,
)
from emr_runtime.caller import PATIENT_ROLE, PURPOSE_OF_USE_KEY
from emr_runtime.policy import ADMIN, ROLES

JWKS_FILE = "dev-jwks.json"
SERVICE_KEYS_DIR = "dev-service-keys"
AUDIENCE = AuthSettings.model_fields["audience"].default
SERVICE_ISSUER = AuthSettings.model_fields["service_issuer"].default
DEFAULT_LIFETIME_SECONDS = 8 * 3600
# The development service whose token a platform service role is minted as (``caller_metadata``).
DEV_SERVICE_FOR_ROLE = {
    role: min(s for s, roles in SERVICE_ASSERTED_ROLES.items() if role in roles) for role in SERVICE_ROLES
}


def service_key_file(run_dir: Path, service: str) -> Path:
    """Where the development key of one platform service lies in ``run_dir``."""
    return run_dir / SERVICE_KEYS_DIR / f"{service}.pem"


def _replace_if_changed(path: Path, content: bytes) -> None:
    """Writes ``content`` to ``path`` unless it holds it already; a reader (a running service
    re-reading its JWKS) sees the old or the new file, never half of one."""
    if path.exists() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.touch(mode=0o600)
    draft.chmod(0o600)
    draft.write_bytes(content)
    draft.replace(path)


def write_dev_keys(run_dir: Path) -> Path:
    """In ``run_dir``: the JWKS file every service trusts (the users' development key and each
    platform service's, bound to it and its roles) and each service's private key; returns the JWKS."""
    users_key = dev_private_key()
    entries: list[dict[str, Any]] = [public_jwk(users_key, key_thumbprint(users_key))]
    for service, roles in SERVICE_ASSERTED_ROLES.items():
        key = dev_service_key(service)
        entries.append(service_jwk(key, service, roles))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _replace_if_changed(service_key_file(run_dir, service), pem)
    jwks = run_dir / JWKS_FILE
    _replace_if_changed(jwks, json.dumps({"keys": entries}, indent=2).encode())
    return jwks


def issue_token(
    subject: str,
    facility_code: str = "",
    roles: Sequence[str] = (ADMIN,),
    client_application: str = "emr-dev",
    lifetime_seconds: float = DEFAULT_LIFETIME_SECONDS,
    **claims: Any,
) -> str:
    """A development bearer token. With a platform service role it is that service's token (issuer
    the service issuer, ``subject`` ``service:<name>``, signed with the service's development key),
    as only the service's own key may assert its roles."""
    key = dev_private_key()
    issuer = DEV_ISSUER
    if set(roles) & SERVICE_ROLES:
        service = subject.removeprefix("service:")
        if not subject.startswith("service:") or service not in SERVICE_ASSERTED_ROLES:
            raise ValueError("a token with a platform service role is that service's: subject service:<name>")
        key, issuer = dev_service_key(service), SERVICE_ISSUER
        lifetime_seconds = min(lifetime_seconds, SERVICE_TOKEN_SECONDS)
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
    actor_id: str,
    facility_code: str = "",
    purpose_of_use: str = "",
    role: str = ADMIN,
    patient_id: str = "",
) -> list[tuple[str, str]]:
    """gRPC metadata of a caller: a development token for these claims and the declared purpose. A
    platform service role acts as the development service holding it (``DEV_SERVICE_FOR_ROLE``);
    ``patient_id``: the patient a patient-role token acts for."""
    if role in SERVICE_ROLES:
        actor_id = f"service:{DEV_SERVICE_FOR_ROLE[role]}"
    claims: dict[str, Any] = {"patient_id": patient_id} if patient_id else {}
    pairs = [(AUTHORIZATION_KEY, f"Bearer {issue_token(actor_id, facility_code, (role,), **claims)}")]
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


def service_jwks(keys: Mapping[str, Path]) -> dict[str, Any]:
    """The JWKS of production service keys (``{service: PEM file}``): each entry the public half of
    the service's key, bound to it and to the roles it asserts (``SERVICE_ASSERTED_ROLES``)."""
    unknown = sorted(set(keys) - set(SERVICE_ASSERTED_ROLES))
    if unknown:
        raise ValueError(f"no platform service signs tokens of its own: {', '.join(unknown)}")
    return {
        "keys": [
            service_jwk(load_private_key(str(path)), service, SERVICE_ASSERTED_ROLES[service])
            for service, path in sorted(keys.items())
        ]
    }


def service_jwks_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emr_devstack service-jwks",
        description="Print the JWKS (auth.jwks) of the platform services' own keys, each bound to its "
        "service and roles.",
    )
    parser.add_argument(
        "keys", nargs="+", metavar="SERVICE=PEM", help=f"one per service: {', '.join(SERVICE_ASSERTED_ROLES)}"
    )
    args = parser.parse_args(list(argv))
    pairs = [item.partition("=") for item in args.keys]
    if any(not separator for _, separator, _ in pairs):
        parser.error("give SERVICE=PEM, e.g. records=records-service-key.pem")
    print(json.dumps(service_jwks({service: Path(path) for service, _, path in pairs}), indent=2))
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emr_devstack issue-token",
        description="Print a development bearer token (signed with the published dev key).",
    )
    parser.add_argument("--facility", default="", help="facility code (mã cơ sở KCB), e.g. 79001")
    parser.add_argument("--role", action="append", choices=sorted(ROLES), required=True, help="repeatable")
    parser.add_argument("--subject", default="dev-user", help="sub: the user or application")
    parser.add_argument("--client", default="emr-dev", help="azp: the client application")
    parser.add_argument(
        "--patient-id", default="", help="patient_id: the patient a patient-role token acts for"
    )
    parser.add_argument("--minutes", type=float, default=DEFAULT_LIFETIME_SECONDS / 60, help="lifetime")
    args = parser.parse_args(list(argv))
    subject = args.subject
    service_roles = sorted(set(args.role) & SERVICE_ROLES)
    if service_roles and not subject.startswith("service:"):
        subject = f"service:{DEV_SERVICE_FOR_ROLE[service_roles[0]]}"
    if PATIENT_ROLE in args.role and not args.patient_id:
        parser.error("--role patient needs --patient-id")
    claims: dict[str, Any] = {"patient_id": args.patient_id} if args.patient_id else {}
    print(issue_token(subject, args.facility, args.role, args.client, args.minutes * 60, **claims))
    return 0


def dev_admin_token(subject: str = "dev-admin") -> ServiceToken:
    """A renewing development admin token for ``emr_runtime.channels.create_channel(token=...)``."""
    key = dev_private_key()
    return ServiceToken(subject, ADMIN, key, key_thumbprint(key), DEV_ISSUER, AUDIENCE)
