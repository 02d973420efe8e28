"""Unit tests of authentication (token verification, JWKS rotation, service tokens) and of the
pure policy decisions. Keys are generated per test; no I/O beyond a temporary JWKS file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2

from emr_runtime import policy
from emr_runtime.auth import (
    SERVICE_ASSERTED_ROLES,
    AuthSettings,
    ServiceToken,
    TokenVerifier,
    dev_private_key,
    dev_service_key,
    key_thumbprint,
    public_jwk,
    service_binding,
    service_jwk,
    sign_token,
)
from emr_runtime.caller import Caller
from emr_runtime.errors import UnauthenticatedError

ISSUER = "https://idp.example.invalid/realms/hospitals"
AUDIENCE = "emr-platform"
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_jwks(path: Path, *keys: Key, bound: dict[str, tuple[Key, set[str]]] | None = None) -> None:
    """A JWKS of ``keys`` (bound to no service) and of each service's key in ``bound``."""
    entries: list[dict[str, Any]] = [public_jwk(k, key_thumbprint(k)) for k in keys]
    entries += [service_jwk(key, service, roles) for service, (key, roles) in (bound or {}).items()]
    path.write_text(json.dumps({"keys": entries}))


def verifier_for(path: Path) -> TokenVerifier:
    return TokenVerifier(AuthSettings(jwks_file=str(path), issuer=ISSUER, clock_skew_seconds=30))


def token(key: Key, lifetime: float = 300, **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "dr-synthetic-07",
        "facility": "79001",
        "roles": ["doctor"],
        "azp": "his-benh-vien-a",
        **overrides,
    }
    return sign_token(key, key_thumbprint(key), claims, lifetime)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Key, Path]:
    key = ec_key()
    path = tmp_path / "jwks.json"
    write_jwks(path, key)
    return key, path


async def test_a_valid_es256_token_becomes_the_caller(keys: tuple[Key, Path]) -> None:
    key, path = keys
    caller = await verifier_for(path).caller(f"Bearer {token(key)}")
    assert (caller.actor_id, caller.facility_code, caller.roles, caller.client_application) == (
        "dr-synthetic-07",
        "79001",
        ("doctor",),
        "his-benh-vien-a",
    )


async def test_rs256_is_accepted_too(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_jwks(tmp_path / "jwks.json", key)
    caller = await verifier_for(tmp_path / "jwks.json").caller(f"Bearer {token(key)}")
    assert caller.roles == ("doctor",)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key: None, "missing 'authorization"),
        (lambda key: "Basic abc", "must be 'Bearer <JWT>'"),
        (lambda key: "Bearer not-a-jwt", "not a well-formed JWT"),
        (lambda key: f"Bearer {token(key, lifetime=-120)}", "expired"),
        (lambda key: f"Bearer {token(key, nbf=int(time.time()) + 600)}", "not valid yet"),
        (lambda key: f"Bearer {token(key, aud='another-api')}", "aud must include"),
        (lambda key: f"Bearer {token(key, iss='https://elsewhere.invalid')}", "not a trusted issuer"),
        (lambda key: f"Bearer {token(ec_key())}", "kid names no key"),
        (lambda key: f"Bearer {token(key, roles='doctor')}", "roles claim must be a list"),
        (lambda key: "Bearer " + token(key, sub="dr-07\nlevel=INFO forged"), "sub claim holds control"),
        (lambda key: "Bearer " + token(key, sub="dr-\u202e70"), "sub claim holds control or bidi"),
        (lambda key: "Bearer " + token(key, facility="79001\x00"), "facility claim holds control"),
        (
            lambda key: "Bearer " + jwt.encode({"sub": "x"}, "secret-secret-secret-secret-32b!", "HS256"),
            "alg must be RS256 or ES256",
        ),
    ],
)
async def test_a_bad_token_is_unauthenticated_with_a_helpful_reason(
    keys: tuple[Key, Path], make: Any, reason: str
) -> None:
    key, path = keys
    with pytest.raises(UnauthenticatedError) as caught:
        await verifier_for(path).caller(make(key))
    assert reason in caught.value.message


async def test_a_forged_signature_is_refused(keys: tuple[Key, Path]) -> None:
    key, path = keys
    header, payload, _ = token(key).split(".")
    forged = token(key, roles=["admin"]).split(".")[2]
    with pytest.raises(UnauthenticatedError, match="signature"):
        await verifier_for(path).caller(f"Bearer {header}.{payload[:-2]}AA.{forged}")


async def test_small_clock_skew_is_tolerated(keys: tuple[Key, Path]) -> None:
    key, path = keys
    caller = await verifier_for(path).caller(f"Bearer {token(key, nbf=int(time.time()) + 10)}")
    assert caller.actor_id == "dr-synthetic-07"


async def test_service_roles_count_only_from_the_service_issuer(tmp_path: Path) -> None:
    user_key, sync_key = ec_key(), ec_key()
    path = tmp_path / "jwks.json"
    write_jwks(path, user_key, bound={"sync": (sync_key, {"sync-service"})})
    verifier = verifier_for(path)
    from_idp = await verifier.caller(f"Bearer {token(user_key, roles=['sync-service', 'nurse'])}")
    assert from_idp.roles == ("nurse",)
    from_service = await verifier.caller(f"Bearer {service_token(sync_key, 'sync', ['sync-service'])}")
    assert (from_service.actor_id, from_service.roles) == ("service:sync", ("sync-service",))


# --- one key per service, with the roles it may assert ---------------------------------------------

SERVICE_ISSUER = "emr-platform-services"


def service_token(key: Key, service: str, roles: list[str], lifetime: float = 600, **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "iss": SERVICE_ISSUER,
        "aud": AUDIENCE,
        "sub": f"service:{service}",
        "roles": roles,
        "azp": f"emr-{service}",
        **overrides,
    }
    return sign_token(key, key_thumbprint(key), claims, lifetime)


@pytest.fixture
def platform_keys(tmp_path: Path) -> tuple[dict[str, Key], Path]:
    """A JWKS with a user key (the provider's, say) and the keys of records and sync."""
    keys: dict[str, Key] = {"user": ec_key(), "records": ec_key(), "sync": ec_key()}
    path = tmp_path / "jwks.json"
    write_jwks(
        path,
        keys["user"],
        bound={"records": (keys["records"], {"platform-service"}), "sync": (keys["sync"], {"sync-service"})},
    )
    return keys, path


async def test_each_service_key_signs_its_own_service_tokens(
    platform_keys: tuple[dict[str, Key], Path],
) -> None:
    keys, path = platform_keys
    verifier = verifier_for(path)
    records = await verifier.caller(
        f"Bearer {service_token(keys['records'], 'records', ['platform-service'])}"
    )
    assert (records.actor_id, records.roles) == ("service:records", ("platform-service",))
    sync = await verifier.caller(f"Bearer {service_token(keys['sync'], 'sync', ['sync-service'])}")
    assert (sync.actor_id, sync.roles) == ("service:sync", ("sync-service",))


@pytest.mark.parametrize(
    ("signer", "service", "roles", "reason"),
    [
        # A stolen records key: it may act as records, never as sync, never as admin.
        ("records", "records", ["sync-service"], "may not assert the role(s) sync-service"),
        (
            "records",
            "records",
            ["platform-service", "sync-service"],
            "may not assert the role(s) sync-service",
        ),
        ("records", "sync", ["sync-service"], "belongs to service:records"),
        ("records", "records", ["admin"], "may not assert the role(s) admin"),
        ("sync", "sync", ["admin"], "may not assert the role(s) admin"),
        ("sync", "sync", ["doctor"], "may not assert the role(s) doctor"),
        # A key bound to no service (a user key, the provider's) signs no service token.
        ("user", "records", ["platform-service"], "own key"),
        ("user", "admin", ["admin"], "own key"),
    ],
)
async def test_a_service_token_that_does_not_fit_its_key_is_unauthenticated(
    platform_keys: tuple[dict[str, Key], Path], signer: str, service: str, roles: list[str], reason: str
) -> None:
    keys, path = platform_keys
    with pytest.raises(UnauthenticatedError) as caught:
        await verifier_for(path).caller(f"Bearer {service_token(keys[signer], service, roles)}")
    assert reason in caught.value.message


async def test_a_service_key_signs_no_users_token(platform_keys: tuple[dict[str, Key], Path]) -> None:
    keys, path = platform_keys
    # The records key minting a token of the users' issuer, as an admin: refused, not demoted.
    with pytest.raises(UnauthenticatedError, match="records service's key, which signs only"):
        await verifier_for(path).caller(f"Bearer {token(keys['records'], roles=['admin'], facility='')}")


@pytest.mark.parametrize(
    "entry",
    [
        {"emr_service": "records", "emr_roles": ["admin"]},
        {"emr_service": "records", "emr_roles": ["platform-service", "doctor"]},
        {"emr_service": "records", "emr_roles": []},
        {"emr_service": "records"},
        {"emr_roles": ["platform-service"]},
        {"emr_service": "Records!", "emr_roles": ["platform-service"]},
    ],
)
async def test_a_jwks_entry_granting_more_than_service_roles_is_not_trusted_at_all(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    key = ec_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**public_jwk(key, key_thumbprint(key)), **entry}]}))
    with pytest.raises(UnauthenticatedError, match="kid names no key"):
        await verifier_for(path).caller(f"Bearer {service_token(key, 'records', ['platform-service'])}")
    with pytest.raises(ValueError, match="emr_"):
        service_binding({**public_jwk(key, "k"), **entry})


async def test_development_keys_are_one_per_service_with_its_roles() -> None:
    verifier = TokenVerifier(AuthSettings(dev_keys=True))
    keys = {service: dev_service_key(service) for service in SERVICE_ASSERTED_ROLES}
    assert len({key_thumbprint(k) for k in [*keys.values(), dev_private_key()]}) == len(keys) + 1
    assert key_thumbprint(dev_service_key("records")) == key_thumbprint(dev_service_key("records"))
    for service, roles in SERVICE_ASSERTED_ROLES.items():
        caller = await verifier.caller(f"Bearer {service_token(keys[service], service, sorted(roles))}")
        assert caller.roles == tuple(sorted(roles))
    with pytest.raises(UnauthenticatedError, match="may not assert the role"):
        await verifier.caller(f"Bearer {service_token(keys['records'], 'records', ['sync-service'])}")
    with pytest.raises(UnauthenticatedError, match="own key"):  # the published users' key
        await verifier.caller(f"Bearer {service_token(dev_private_key(), 'sync', ['sync-service'])}")
    with pytest.raises(UnauthenticatedError, match="may not assert the role"):
        await verifier.caller(f"Bearer {service_token(keys['sync'], 'sync', ['admin'])}")


async def test_service_tokens_of_the_settings_verify_and_carry_their_role() -> None:
    settings = AuthSettings(dev_keys=True)
    for service, role in (("records", "platform-service"), ("sync", "sync-service")):
        minted = ServiceToken.from_settings(settings, service, role)
        assert minted is not None
        caller = await TokenVerifier(settings).caller(minted.authorization())
        assert (caller.actor_id, caller.roles) == (f"service:{service}", (role,))


# --- token lifetime --------------------------------------------------------------------------------


async def test_an_over_long_users_token_is_unauthenticated(keys: tuple[Key, Path]) -> None:
    key, path = keys
    verifier = verifier_for(path)  # the default: 12 h
    assert (await verifier.caller(f"Bearer {token(key, lifetime=12 * 3600)}")).roles == ("doctor",)
    with pytest.raises(UnauthenticatedError, match=r"lifetime .* exceeds the 43200 s"):
        await verifier.caller(f"Bearer {token(key, lifetime=12 * 3600 + 60)}")
    with pytest.raises(UnauthenticatedError, match="AUTH_MAX_TOKEN_LIFETIME_SECONDS"):
        await verifier.caller(f"Bearer {token(key, lifetime=365 * 86400)}")


async def test_the_lifetime_counts_from_now_when_the_token_has_no_iat(keys: tuple[Key, Path]) -> None:
    key, path = keys
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-no-iat", "roles": ["doctor"]}
    header = {"kid": key_thumbprint(key)}
    short = jwt.encode({**claims, "exp": now + 600}, key, algorithm="ES256", headers=header)
    long = jwt.encode({**claims, "exp": now + 30 * 86400}, key, algorithm="ES256", headers=header)
    assert (await verifier_for(path).caller(f"Bearer {short}")).actor_id == "dr-no-iat"
    with pytest.raises(UnauthenticatedError, match="lifetime"):
        await verifier_for(path).caller(f"Bearer {long}")


async def test_the_maximum_lifetime_is_a_setting(keys: tuple[Key, Path]) -> None:
    key, path = keys
    settings = AuthSettings(jwks_file=str(path), issuer=ISSUER, max_token_lifetime_seconds=300)
    with pytest.raises(UnauthenticatedError, match="exceeds the 300 s"):
        await TokenVerifier(settings).caller(f"Bearer {token(key, lifetime=301)}")


async def test_a_service_token_lives_at_most_ten_minutes(platform_keys: tuple[dict[str, Key], Path]) -> None:
    keys, path = platform_keys
    verifier = verifier_for(path)
    ok = service_token(keys["records"], "records", ["platform-service"], lifetime=600)
    assert (await verifier.caller(f"Bearer {ok}")).actor_id == "service:records"
    too_long = service_token(keys["records"], "records", ["platform-service"], lifetime=3600)
    with pytest.raises(UnauthenticatedError, match="service tokens"):
        await verifier.caller(f"Bearer {too_long}")


async def test_keys_rotate_without_a_restart(tmp_path: Path) -> None:
    old, new = ec_key(), ec_key()
    path = tmp_path / "jwks.json"
    write_jwks(path, old)
    verifier = verifier_for(path)
    assert (await verifier.caller(f"Bearer {token(old, sub='before')}")).roles == ("doctor",)
    write_jwks(path, new)
    assert (await verifier.caller(f"Bearer {token(new)}")).roles == ("doctor",)
    with pytest.raises(UnauthenticatedError, match="kid"):
        await verifier.caller(f"Bearer {token(old, sub='after')}")


def verifier_at(path: Path, now: list[float]) -> TokenVerifier:
    settings = AuthSettings(jwks_file=str(path), issuer=ISSUER, clock_skew_seconds=0)
    return TokenVerifier(settings, clock=lambda: now[0])


async def test_a_verified_token_is_trusted_again_until_its_expiry(keys: tuple[Key, Path]) -> None:
    key, path = keys
    now = [time.time()]
    verifier = verifier_at(path, now)
    presented = f"Bearer {token(key, lifetime=30)}"
    assert (await verifier.caller(presented)).actor_id == "dr-synthetic-07"
    write_jwks(path, ec_key())  # makes any new verification of the token fail
    now[0] += 20
    assert (await verifier.caller(presented)).actor_id == "dr-synthetic-07"  # remembered
    now[0] += 20  # past its exp (and before the reverify time): verified again
    with pytest.raises(UnauthenticatedError):
        await verifier.caller(presented)


async def test_a_withdrawn_key_stops_working_within_the_reverify_time(keys: tuple[Key, Path]) -> None:
    key, path = keys
    now = [time.time()]
    verifier = verifier_at(path, now)
    presented = f"Bearer {token(key, lifetime=3600)}"
    await verifier.caller(presented)
    write_jwks(path, ec_key())  # the key is withdrawn
    assert (await verifier.caller(presented)).actor_id == "dr-synthetic-07"  # remembered
    now[0] += TokenVerifier.REVERIFY_SECONDS + 1
    with pytest.raises(UnauthenticatedError, match="kid"):
        await verifier.caller(presented)


async def test_a_service_token_verifies_where_its_key_is_in_the_jwks(tmp_path: Path) -> None:
    key = ec_key()
    write_jwks(tmp_path / "jwks.json", bound={"records": (key, {"platform-service"})})
    pem = tmp_path / "service.pem"
    from cryptography.hazmat.primitives import serialization

    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    settings = AuthSettings(jwks_file=str(tmp_path / "jwks.json"), service_key_file=str(pem))
    service_token = ServiceToken.from_settings(settings, "records")
    assert service_token is not None
    authorization = service_token.authorization()
    assert service_token.authorization() == authorization  # reused until renewal is due
    caller = await TokenVerifier(settings).caller(authorization)
    assert (caller.actor_id, caller.roles) == ("service:records", ("platform-service",))


def test_enabled_without_keys_fails_at_start() -> None:
    with pytest.raises(ValueError, match="AUTH_JWKS"):
        TokenVerifier(AuthSettings())


# --- policy --------------------------------------------------------------------------------------

IDENTITY = "/emr.identity.v1.PatientIdentityService/"
RECORDS = "/emr.records.v1.ClinicalRecordsService/"


def caller(*roles: str, facility: str = "79001") -> Caller:
    return Caller("someone", facility, "TREATMENT", roles=roles)


def test_writes_are_for_the_callers_own_facility() -> None:
    here = identity_pb2.RegisterPatientRequest(facility_code="79001")
    there = identity_pb2.RegisterPatientRequest(facility_code="79002")
    assert policy.decide(f"{IDENTITY}RegisterPatient", caller("registrar"), here).allowed
    denied = policy.decide(f"{IDENTITY}RegisterPatient", caller("registrar"), there)
    assert not denied.allowed and "own facility" in denied.reason
    observation = records_pb2.ClinicalResource(observation=records_pb2.Observation(facility_code="79002"))
    request = records_pb2.CreateResourceRequest(resource=observation)
    assert not policy.decide(f"{RECORDS}CreateResource", caller("lab"), request).allowed
    assert policy.decide(f"{RECORDS}CreateResource", caller("lab", facility="79002"), request).allowed


def test_patient_calls_need_a_relationship_and_searches_a_facility_claim() -> None:
    request = records_pb2.GetPatientTimelineRequest(patient_id="p")
    method = f"{RECORDS}GetPatientTimeline"
    decision = policy.decide(method, caller("nurse"), request)
    assert decision.allowed and decision.needs_relationship and decision.facility_scoped
    update = identity_pb2.UpdatePatientRequest(patient_id="p")
    assert policy.decide(f"{IDENTITY}UpdatePatient", caller("doctor"), update).needs_relationship
    # A search is facility-scoped (its results are filtered) and needs a facility claim.
    search = identity_pb2.SearchPatientsRequest(phone="0912345678")
    found = policy.decide(f"{IDENTITY}SearchPatients", caller("registrar"), search)
    assert found.allowed and found.facility_scoped and not found.needs_relationship
    assert not policy.decide(f"{IDENTITY}SearchPatients", caller("registrar", facility=""), search).allowed


def test_only_doctors_declare_an_emergency_access_and_only_for_their_facility() -> None:
    here = identity_pb2.DeclareEmergencyAccessRequest(patient_id="p", facility_code="79001")
    there = identity_pb2.DeclareEmergencyAccessRequest(patient_id="p", facility_code="79002")
    method = f"{IDENTITY}DeclareEmergencyAccess"
    assert policy.decide(method, caller("doctor"), here).allowed
    assert not policy.decide(method, caller("doctor"), there).allowed
    assert not policy.decide(method, caller("nurse"), here).allowed
    assert not policy.decide(method, caller("registrar"), here).allowed


def test_roles_outside_the_rule_and_facilityless_hospital_tokens_are_denied() -> None:
    request = records_pb2.GetPatientTimelineRequest(patient_id="p")
    assert not policy.decide(f"{RECORDS}GetPatientTimeline", caller("lab"), request).allowed
    assert not policy.decide(f"{RECORDS}GetPatientTimeline", caller("doctor", facility=""), request).allowed
    assert not policy.decide(f"{RECORDS}GetPatientTimeline", caller(), request).allowed
    assert not policy.decide("/emr.unknown.v1.X/Y", caller("admin"), request).allowed


def test_platform_roles_are_not_facility_scoped() -> None:
    request = records_pb2.GetEncounterBundleRequest(encounter_id="e")
    decision = policy.decide(f"{RECORDS}GetEncounterBundle", caller("sync-service", facility=""), request)
    assert decision.allowed and not decision.facility_scoped and decision.role == "sync-service"


async def test_a_patient_token_carries_the_patient_it_acts_for(keys: tuple[Key, Path]) -> None:
    key, path = keys
    caller = await verifier_for(path).caller(
        f"Bearer {token(key, sub='app-user-1', roles=['patient'], patient_id='patient-7', facility='')}"
    )
    assert (caller.roles, caller.patient_id, caller.facility_code) == (("patient",), "patient-7", "")
    doctor = await verifier_for(path).caller(f"Bearer {token(key)}")
    assert doctor.patient_id == ""


@pytest.mark.parametrize("patient_id", [None, " ", 7, "x" * 65, "p\u202e1"])
async def test_a_patient_token_without_a_sound_patient_claim_is_unauthenticated(
    keys: tuple[Key, Path], patient_id: Any
) -> None:
    key, path = keys
    claims: dict[str, Any] = {"roles": ["patient"]}
    if patient_id is not None:
        claims["patient_id"] = patient_id
    with pytest.raises(UnauthenticatedError) as caught:
        await verifier_for(path).caller(f"Bearer {token(key, **claims)}")
    assert "patient_id" in caught.value.message
