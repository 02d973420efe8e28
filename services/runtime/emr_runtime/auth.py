"""Authentication: bearer JWTs (RS256, ES256) verified against JWKS keys, and the tokens a service
mints for its own calls to other services.

Token claims (documented in the README, section Security):
- ``sub``: the user or application acting (``service:<name>`` for the platform's own services);
- ``facility``: the facility code (mã cơ sở KCB) the user works at;
- ``roles``: list of platform roles (``emr_runtime.policy.ROLES``);
- ``azp`` (or ``client_id``): the hospital application that obtained the token;
- ``patient_id``: for the ``patient`` role (a patient-facing app, acting for one patient) the
  enterprise patient id the token's subject is; required with that role;
- ``iss``, ``aud``, ``exp``, ``nbf`` checked with a small clock skew; ``exp`` at most
  ``AUTH_MAX_TOKEN_LIFETIME_SECONDS`` after ``iat`` (service tokens: ``SERVICE_TOKEN_SECONDS``).

Keys come from a JWKS file (re-read when it changes) and/or a JWKS URL (cached, fetched again when
a token names a key id it has not seen: the identity provider rotated its keys), so keys rotate
without a restart.

Each platform service signs its own tokens with a key of its own. Its JWKS entry names the service
and the roles that key may assert (members ``emr_service`` and ``emr_roles``, service roles only:
never admin, never a hospital role). A token of the service issuer is accepted only when signed by
such a key, with ``sub`` ``service:<that service>`` and no role beyond the key's; a service key
signs nothing else. So a stolen records key acts as records, never as sync, and never as admin.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from emr_runtime.caller import PATIENT_ROLE, Caller
from emr_runtime.errors import UnauthenticatedError
from emr_runtime.guard import PLAIN_FORBIDDEN

log = logging.getLogger("emr.auth")

ALGORITHMS = ("RS256", "ES256")
AUTHORIZATION_KEY = "authorization"
# Roles only the platform's own services hold: accepted from tokens of the service issuer only, so
# that an identity provider's token can never act as a platform service.
SERVICE_ROLES = frozenset({"sync-service", "platform-service"})
SERVICE_TOKEN_SECONDS = 600
# The roles each platform service asserts in its own tokens (the development keys are bound to these;
# production JWKS entries name theirs). Only services that call others: audit calls none, and the
# gateway forwards its caller's token.
SERVICE_ASSERTED_ROLES: dict[str, frozenset[str]] = {
    "identity": frozenset({"platform-service"}),
    "records": frozenset({"platform-service"}),
    "sync": frozenset({"sync-service"}),
}
# JWKS members binding a key to a platform service.
JWK_SERVICE = "emr_service"
JWK_ROLES = "emr_roles"
SERVICE_NAME = re.compile(r"[a-z][a-z_]{0,31}")
# A token naming an unknown key id makes the URL be fetched again, at most this often.
MIN_REFETCH_SECONDS = 30.0
DEV_ISSUER = "emr-dev-idp"
# The development key is derived from this published seed: anyone can mint tokens with it, which
# is what `make up`, tests and the podman CI run need, and why production never enables it.
_DEV_SEED = b"emr-platform development signing key - public, never for production"


class AuthSettings(BaseSettings):
    """How incoming bearer tokens are verified and how a service signs its own (AUTH_*)."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", frozen=True)

    enabled: bool = Field(True, description="Verify bearer tokens and apply the access policy")
    issuer: str = Field("", description="Expected iss of users' tokens (the hospitals' identity provider)")
    audience: str = Field("emr-platform", description="Expected aud of every token")
    jwks_url: str = Field("", description="JWKS URL of the identity provider")
    jwks_file: str = Field("", description="JWKS file (e.g. the platform services' public keys)")
    jwks_refresh_seconds: float = Field(300.0, gt=0, description="How long fetched JWKS keys are cached")
    clock_skew_seconds: float = Field(30.0, ge=0, le=300, description="Leeway for exp and nbf")
    max_token_lifetime_seconds: float = Field(
        12 * 3600.0, gt=0, description="Longest exp - iat a user's token may have (service tokens: 600 s)"
    )
    service_issuer: str = Field("emr-platform-services", description="iss of service tokens")
    service_key_file: str = Field("", description="PEM private key this service signs its tokens with")
    dev_keys: bool = Field(False, description="Trust and sign with the published development key")


def _p256_key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    secret = int.from_bytes(hashlib.sha256(seed).digest(), "big")
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    return ec.derive_private_key(secret % (order - 1) + 1, ec.SECP256R1())


def dev_private_key() -> ec.EllipticCurvePrivateKey:
    """The development P-256 key of users' tokens (deterministic, public: dev and tests only). It
    signs no service token: each service has its own (``dev_service_key``)."""
    return _p256_key(_DEV_SEED)


def dev_service_key(service: str) -> ec.EllipticCurvePrivateKey:
    """The development P-256 key of one platform service, derived from the public seed."""
    return _p256_key(_DEV_SEED + b"\x00service:" + service.encode())


@dataclass(frozen=True)
class ServiceKeyBinding:
    """Whose key it is: the service whose tokens it signs and the roles they may carry."""

    service: str
    roles: frozenset[str]


def service_binding(entry: Mapping[str, Any]) -> ServiceKeyBinding | None:
    """The binding a JWKS entry declares; None for an entry without one. ValueError when it is
    malformed or grants more than service roles (such a key is not trusted at all)."""
    if JWK_SERVICE not in entry and JWK_ROLES not in entry:
        return None
    service, roles = entry.get(JWK_SERVICE), entry.get(JWK_ROLES)
    if not isinstance(service, str) or not SERVICE_NAME.fullmatch(service):
        raise ValueError(f"{JWK_SERVICE} must name a platform service (lowercase letters and _)")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise ValueError(f"{JWK_ROLES} must be a non-empty list of roles")
    if not set(roles) <= SERVICE_ROLES:
        raise ValueError(f"{JWK_ROLES} may hold only {', '.join(sorted(SERVICE_ROLES))}")
    return ServiceKeyBinding(service, frozenset(roles))


def service_jwk(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, service: str, roles: frozenset[str] | set[str]
) -> dict[str, Any]:
    """The JWKS entry of a platform service's key: its public half, bound to the service and roles."""
    jwk: dict[str, Any] = public_jwk(key, key_thumbprint(key))
    jwk.update({JWK_SERVICE: service, JWK_ROLES: sorted(roles)})
    service_binding(jwk)  # refuses what a verifier would refuse
    return jwk


def public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, key_id: str) -> dict[str, str]:
    """The public half of a signing key as a JWK (what goes into the JWKS)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        text, algorithm = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()), "ES256"
    else:
        text, algorithm = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()), "RS256"
    jwk: dict[str, str] = json.loads(text)
    jwk.update(kid=key_id, use="sig", alg=algorithm)
    return jwk


def key_thumbprint(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    """RFC 7638 JWK thumbprint: a key id that follows from the key itself."""
    jwk = public_jwk(key, "")
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def load_private_key(path: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("AUTH_SERVICE_KEY_FILE must hold an EC P-256 or RSA private key")
    return key


def sign_token(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    key_id: str,
    claims: Mapping[str, Any],
    lifetime_seconds: float,
) -> str:
    """A signed JWT with ``iat``/``nbf``/``exp``/``jti`` added to ``claims``."""
    now = int(time.time())
    payload = {"iat": now, "nbf": now, "exp": now + int(lifetime_seconds), "jti": str(uuid.uuid4()), **claims}
    algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": key_id})


class KeySet:
    """The verification keys by key id, from a file and/or a URL, kept fresh without a restart."""

    def __init__(self, settings: AuthSettings) -> None:
        self._file = settings.jwks_file
        self._url = settings.jwks_url
        self._refresh = settings.jwks_refresh_seconds
        self._static: dict[str, jwt.PyJWK] = {}
        self._static_bindings: dict[str, ServiceKeyBinding] = {}
        if settings.dev_keys:
            key = dev_private_key()
            self._static[key_thumbprint(key)] = jwt.PyJWK(public_jwk(key, key_thumbprint(key)))
            for service, roles in SERVICE_ASSERTED_ROLES.items():
                entry = service_jwk(dev_service_key(service), service, roles)
                self._static[entry["kid"]] = jwt.PyJWK(entry)
                self._static_bindings[entry["kid"]] = ServiceKeyBinding(service, roles)
        self._file_keys: dict[str, jwt.PyJWK] = {}
        self._file_bindings: dict[str, ServiceKeyBinding] = {}
        self._file_stamp: tuple[float, int] | None = None
        self._url_keys: dict[str, jwt.PyJWK] = {}
        self._url_fetched = float("-inf")
        self._lock = asyncio.Lock()
        if not (self._file or self._url or self._static):
            raise ValueError(
                "authentication is enabled but no keys are configured: set AUTH_JWKS_URL or AUTH_JWKS_FILE"
            )

    def binding(self, key_id: str) -> ServiceKeyBinding | None:
        """The platform service a key belongs to (None: not a service's key). The identity
        provider's keys (the URL's) never belong to a service."""
        if key_id in self._static:
            return self._static_bindings.get(key_id)
        if key_id in self._file_keys:
            return self._file_bindings.get(key_id)
        return None

    async def key(self, key_id: str) -> jwt.PyJWK | None:
        self._reload_file()
        found = self._static.get(key_id) or self._file_keys.get(key_id) or self._url_keys.get(key_id)
        if found is not None or not self._url:
            if found is not None and self._url and time.monotonic() - self._url_fetched > self._refresh:
                await self._fetch_url()
            return found
        # Unknown key id: the provider may have rotated; fetch again (not more often than needed).
        if time.monotonic() - self._url_fetched > min(self._refresh, MIN_REFETCH_SECONDS):
            await self._fetch_url()
        return self._url_keys.get(key_id)

    def _reload_file(self) -> None:
        if not self._file:
            return
        try:
            stat = os.stat(self._file)
        except OSError:
            log.warning("JWKS file unreadable; keeping the keys read before")
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._file_stamp:
            try:
                self._file_keys, self._file_bindings = _parse_jwks(Path(self._file).read_text())
                self._file_stamp = stamp
            except (OSError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError):
                log.warning("JWKS file invalid; keeping the keys read before")

    async def _fetch_url(self) -> None:
        async with self._lock:
            if time.monotonic() - self._url_fetched < 1.0:
                return  # another call fetched it just now
            self._url_fetched = time.monotonic()
            try:
                text = await asyncio.to_thread(_http_get, self._url)
                self._url_keys, _ = _parse_jwks(text)  # a provider's key is no service's
            except (OSError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as error:
                log.warning(
                    "JWKS URL fetch failed; keeping the keys fetched before",
                    extra={"error_type": type(error).__name__},
                )


def _http_get(url: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise ValueError("AUTH_JWKS_URL must be an http(s) URL")
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (scheme checked above)
        body: bytes = response.read(1024 * 1024)
    return body.decode()


def _parse_jwks(text: str) -> tuple[dict[str, jwt.PyJWK], dict[str, ServiceKeyBinding]]:
    """The keys of a JWKS document by key id, and the service bindings its entries declare. An
    entry whose binding is malformed or grants more than service roles is left out."""
    keys: dict[str, jwt.PyJWK] = {}
    bindings: dict[str, ServiceKeyBinding] = {}
    for entry in json.loads(text).get("keys", []):
        if not (isinstance(entry, dict) and entry.get("kid") and entry.get("kty") in ("RSA", "EC")):
            continue
        key_id = str(entry["kid"])
        try:
            binding = service_binding(entry)
        except ValueError as error:
            log.warning(
                "JWKS entry left out: its service binding is invalid",
                extra={"kid": key_id, "reason": str(error)},
            )
            continue
        keys[key_id] = jwt.PyJWK(entry)
        if binding is not None:
            bindings[key_id] = binding
    return keys, bindings


class TokenVerifier:
    """Turns ``authorization: Bearer <JWT>`` into a verified Caller or an UnauthenticatedError whose
    reason helps the integrator (what is wrong with the token) and tells nothing else.

    A token verified once is trusted again, without its signature checked, until its ``exp`` but
    at most ``REVERIFY_SECONDS`` (so a key withdrawn from the JWKS stops working within that time):
    an app presents the same token on every call, and the signature check is most of the cost."""

    REVERIFY_SECONDS = 60.0
    MAX_REMEMBERED = 10_000  # tokens come from callers: bound the memory they can take

    def __init__(
        self,
        settings: AuthSettings,
        keys: KeySet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verified: dict[str, tuple[Caller, float]] = {}  # token -> (caller, trusted until)
        self._clock = clock
        self._keys = keys or KeySet(settings)
        self._issuers = {i for i in (settings.issuer, settings.service_issuer) if i}
        if settings.dev_keys:
            self._issuers.add(DEV_ISSUER)
        self._service_issuer = settings.service_issuer
        self._audience = settings.audience
        self._leeway = settings.clock_skew_seconds
        self._max_lifetime = settings.max_token_lifetime_seconds

    async def caller(self, authorization: str | None) -> Caller:
        token = _bearer(authorization)
        now = self._clock()
        remembered = self._verified.get(token)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        caller, expires_at = await self._verify(token)
        if len(self._verified) >= self.MAX_REMEMBERED:
            self._verified = {t: v for t, v in self._verified.items() if now < v[1]}
            if len(self._verified) >= self.MAX_REMEMBERED:
                self._verified.clear()
        self._verified[token] = (caller, min(expires_at, now + self.REVERIFY_SECONDS))
        return caller

    async def _verify(self, token: str) -> tuple[Caller, float]:
        """The token's caller and its expiry (seconds since the epoch), or UnauthenticatedError."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise UnauthenticatedError("the bearer token is not a well-formed JWT", "malformed") from None
        if header.get("alg") not in ALGORITHMS:
            raise UnauthenticatedError("the token's alg must be RS256 or ES256", "malformed")
        key_id = str(header.get("kid", ""))
        key = await self._keys.key(key_id)
        if key is None:
            raise UnauthenticatedError("the token's kid names no key of the configured JWKS", "unknown_key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(header["alg"])],
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the token has expired", "expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError(
                "the token is not valid yet (nbf/iat in the future)", "not_yet_valid"
            ) from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(
                f"the token's aud must include {self._audience!r}", "wrong_audience"
            ) from None
        except jwt.MissingRequiredClaimError as error:
            raise UnauthenticatedError(f"the token lacks the {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("the token's signature does not verify", "bad_signature") from None
        except jwt.InvalidTokenError:
            raise UnauthenticatedError("the token is invalid") from None
        if claims.get("iss") not in self._issuers:
            raise UnauthenticatedError("the token's iss is not a trusted issuer", "untrusted_issuer")
        self._check_lifetime(claims)
        caller = self._caller(claims)
        self._check_service_key(claims, key_id, caller.roles)
        return caller, float(claims["exp"])

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """A token may live at most the configured lifetime (a service token: its fixed one), from
        its iat, or from now when it has none: a leaked long-lived token is a standing key."""
        service = claims["iss"] == self._service_issuer
        limit = SERVICE_TOKEN_SECONDS if service else self._max_lifetime
        issued = claims.get("iat")
        if not isinstance(issued, int | float) or isinstance(issued, bool):
            issued = self._clock()
        lifetime = float(claims["exp"]) - float(issued)
        if lifetime > limit:
            setting = "service tokens" if service else "AUTH_MAX_TOKEN_LIFETIME_SECONDS"
            raise UnauthenticatedError(
                f"the token's lifetime (exp - iat: {lifetime:.0f} s) exceeds the {limit:.0f} s "
                f"this platform accepts ({setting}); get a shorter-lived token"
            )

    def _check_service_key(self, claims: Mapping[str, Any], key_id: str, roles: tuple[str, ...]) -> None:
        """Service tokens are signed by the key of the service they name, with roles that key may
        assert; a service's key signs nothing else."""
        binding = self._keys.binding(key_id)
        if claims["iss"] != self._service_issuer:
            if binding is not None:
                raise UnauthenticatedError(
                    f"the token is signed by the {binding.service} service's key, which signs only "
                    "tokens of the service issuer"
                )
            return
        if binding is None:
            raise UnauthenticatedError(
                "service tokens must be signed by a platform service's own key (a JWKS entry with "
                f"{JWK_SERVICE} and {JWK_ROLES})"
            )
        if claims["sub"] != f"service:{binding.service}":
            raise UnauthenticatedError(
                f"the token's sub does not match its key, which belongs to service:{binding.service}"
            )
        beyond = sorted(set(roles) - binding.roles)
        if beyond:
            raise UnauthenticatedError(
                f"the {binding.service} service's key may not assert the role(s) {', '.join(beyond)}"
            )

    def _caller(self, claims: Mapping[str, Any]) -> Caller:
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise UnauthenticatedError("the token's roles claim must be a list of strings")
        if claims["iss"] != self._service_issuer:
            roles = [r for r in roles if r not in SERVICE_ROLES]
        facility = claims.get("facility", "")
        if not isinstance(facility, str):
            raise UnauthenticatedError("the token's facility claim must be a string")
        # The subject and facility reach logs and every audit event as they are: held to the same
        # characters as a request's ids (no control characters, line breaks or bidi controls).
        for claim, value in (("sub", str(claims["sub"])), ("facility", facility)):
            if PLAIN_FORBIDDEN.search(value):
                raise UnauthenticatedError(f"the token's {claim} claim holds control or bidi characters")
        patient_id = claims.get("patient_id", "")
        if not isinstance(patient_id, str) or len(patient_id) > 64 or PLAIN_FORBIDDEN.search(patient_id):
            raise UnauthenticatedError("the token's patient_id claim must be an id of at most 64 characters")
        if PATIENT_ROLE in roles and not patient_id.strip():
            raise UnauthenticatedError("a token with the patient role needs a patient_id claim")
        client = claims.get("azp") or claims.get("client_id") or ""
        return Caller(
            actor_id=str(claims["sub"])[:128],
            facility_code=facility[:16],
            purpose_of_use="",
            role=" ".join(roles)[:64],
            client_application=str(client)[:64],
            roles=tuple(roles),
            patient_id=patient_id.strip(),
        )


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise UnauthenticatedError("missing 'authorization: Bearer <JWT>' metadata", "missing")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the authorization metadata must be 'Bearer <JWT>'", "missing")
    return token.strip()


class ServiceToken:
    """The token a platform service presents on its own calls (``sub`` = ``service:<name>``),
    signed with its own configured key (whose public half is in every service's JWKS, bound to this
    service and its role), renewed before it expires."""

    def __init__(
        self,
        service: str,
        role: str,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        key_id: str,
        issuer: str,
        audience: str,
    ) -> None:
        self._claims = {
            "iss": issuer,
            "aud": audience,
            "sub": f"service:{service}",
            "roles": [role],
            "azp": f"emr-{service}",
        }
        self._key = key
        self._key_id = key_id
        self._token = ""
        self._renew_at = 0.0

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, service: str, role: str = "platform-service"
    ) -> ServiceToken | None:
        """The service's token from its configured key. A key is used even when this service
        checks no tokens itself (AUTH_ENABLED=false): the services it calls may. None only when
        neither a key nor authentication is configured."""
        if settings.service_key_file:
            key = load_private_key(settings.service_key_file)
            key_id = key_thumbprint(key)
        elif settings.dev_keys:
            key = dev_service_key(service)
            key_id = key_thumbprint(key)
        elif not settings.enabled:
            return None
        else:
            raise ValueError(f"{service} calls other services: set AUTH_SERVICE_KEY_FILE")
        return cls(service, role, key, key_id, settings.service_issuer, settings.audience)

    def authorization(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._token = sign_token(self._key, self._key_id, self._claims, SERVICE_TOKEN_SECONDS)
            self._renew_at = now + SERVICE_TOKEN_SECONDS * 0.75
        return f"Bearer {self._token}"
