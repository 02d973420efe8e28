"""Sharing grants, referrals and emergency access (break the glass) against the real platform: who
may record, revoke, declare and review them (an attack table), what they open, and how the patient's
access report shows them."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.processes import poll_until
from emr_devstack.tokens import caller_metadata
from emr_identity.synthetic import FEMALE_GIVENS, FEMALE_MIDDLES, REMAINING_SURNAMES

T = TypeVar("T")
Metadata = list[tuple[str, str]]
AUDITOR = caller_metadata("dpo-sharing", "", "", role="auditor")


def platform() -> list[tuple[str, str]]:
    """The records service's own token: minted when used, as service tokens live 10 minutes."""
    return caller_metadata("service:records", "", "TREATMENT", role="platform-service")


JUSTIFICATION = "Synthetic: unconscious after a road accident, allergy history needed"


def later(seconds: float) -> Timestamp:
    moment = Timestamp()
    moment.FromSeconds(int(time.time() + seconds))
    return moment


def staff(role: str, facility: str, purpose: str = "TREATMENT") -> Metadata:
    return caller_metadata(f"{role}-{facility}-{uuid.uuid4().hex[:6]}", facility, purpose, role=role)


async def events_of(audit: Any, **filters: Any) -> list[audit_pb2.AuditEvent]:
    events: list[audit_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(page_size=500, page_token=token, **filters), metadata=AUDITOR
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


@dataclass(frozen=True)
class Scene:
    """A patient registered at ``home``; ``elsewhere`` and ``third`` never registered them."""

    home: str
    elsewhere: str
    third: str
    patient_id: str


@pytest.fixture
async def scene(identity: Any, registration: Callable[..., pb.RegisterPatientRequest]) -> Scene:
    suffix = uuid.uuid4().int % 9000
    home, elsewhere, third = f"5{suffix:04d}", f"4{suffix:04d}", f"3{suffix:04d}"
    registered = await identity.RegisterPatient(registration(home), metadata=staff("registrar", home))
    return Scene(home, elsewhere, third, registered.patient.patient_id)


def grant_request(scene: Scene, facility: str, **overrides: Any) -> pb.RecordSharingGrantRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "patient_id": scene.patient_id,
        "facility_code": facility,
        "grantee_facility_code": scene.elsewhere,
        "purpose": pb.SHARING_PURPOSE_TREATMENT,
        "evidence": pb.CONSENT_EVIDENCE_SIGNED_FORM,
        "evidence_reference": f"CF-{uuid.uuid4().hex[:8]}",
        "end_time": later(30 * 86400),
    }
    fields.update(overrides)
    return pb.RecordSharingGrantRequest(**fields)


def emergency_request(scene: Scene, facility: str, **overrides: Any) -> pb.DeclareEmergencyAccessRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "patient_id": scene.patient_id,
        "facility_code": facility,
        "reason": pb.EMERGENCY_REASON_UNABLE_TO_CONSENT,
        "justification": JUSTIFICATION,
    }
    fields.update(overrides)
    return pb.DeclareEmergencyAccessRequest(**fields)


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def get_patient(identity: Any, scene: Scene, metadata: Metadata) -> grpc.StatusCode:
    return await code_of(
        identity.GetPatient(pb.GetPatientRequest(patient_id=scene.patient_id), metadata=metadata)
    )


# --- the attack table ---------------------------------------------------------------------------

DENIED = grpc.StatusCode.PERMISSION_DENIED
ATTACKS: list[tuple[str, str, str, Callable[[Scene, str], Any], grpc.StatusCode]] = [
    # (attacker role, attacker facility, RPC, request builder (scene, existing grant id), expected)
    ("registrar", "elsewhere", "RecordSharingGrant", lambda s, g: grant_request(s, s.elsewhere), DENIED),
    ("registrar", "elsewhere", "RecordSharingGrant", lambda s, g: grant_request(s, s.home), DENIED),
    (
        "registrar",
        "elsewhere",
        "RevokeSharingGrant",
        lambda s, g: pb.RevokeSharingGrantRequest(
            request_id=str(uuid.uuid4()), sharing_grant_id=g, facility_code=s.elsewhere
        ),
        DENIED,
    ),
    ("doctor", "home", "RecordSharingGrant", lambda s, g: grant_request(s, s.home), DENIED),
    (
        "doctor",
        "elsewhere",
        "RecordReferral",
        lambda s, g: pb.RecordReferralRequest(
            request_id=str(uuid.uuid4()),
            patient_id=s.patient_id,
            facility_code=s.elsewhere,
            receiving_facility_code=s.third,
            end_time=later(86400),
        ),
        DENIED,
    ),
    ("nurse", "elsewhere", "DeclareEmergencyAccess", lambda s, g: emergency_request(s, s.elsewhere), DENIED),
    ("registrar", "home", "DeclareEmergencyAccess", lambda s, g: emergency_request(s, s.home), DENIED),
    ("doctor", "elsewhere", "DeclareEmergencyAccess", lambda s, g: emergency_request(s, s.home), DENIED),
    ("doctor", "elsewhere", "ListEmergencyAccesses", lambda s, g: pb.ListEmergencyAccessesRequest(), DENIED),
    (
        "doctor",
        "elsewhere",
        "ReviewEmergencyAccess",
        lambda s, g: pb.ReviewEmergencyAccessRequest(
            request_id=str(uuid.uuid4()), emergency_access_id=g, outcome=pb.EMERGENCY_REVIEW_OUTCOME_JUSTIFIED
        ),
        DENIED,
    ),
    (
        "nurse",
        "elsewhere",
        "ListSharingGrants",
        lambda s, g: pb.ListSharingGrantsRequest(patient_id=s.patient_id),
        DENIED,
    ),
    (
        "doctor",
        "elsewhere",
        "CheckAccess",
        lambda s, g: pb.CheckAccessRequest(patient_id=s.patient_id, facility_code=s.elsewhere),
        DENIED,
    ),
    (
        "doctor",
        "elsewhere",
        "DeclareEmergencyAccess",
        lambda s, g: emergency_request(s, s.elsewhere, patient_id=str(uuid.uuid4())),
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "doctor",
        "elsewhere",
        "DeclareEmergencyAccess",
        lambda s, g: emergency_request(s, s.elsewhere, justification="  help    "),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "registrar",
        "home",
        "RecordSharingGrant",
        lambda s, g: grant_request(s, s.home, evidence=pb.CONSENT_EVIDENCE_UNSPECIFIED),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "registrar",
        "home",
        "RecordSharingGrant",
        lambda s, g: grant_request(s, s.home, end_time=later(6 * 366 * 86400)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "registrar",
        "home",
        "RecordSharingGrant",
        lambda s, g: grant_request(s, s.home, end_time=Timestamp(seconds=-(10**12))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
]


async def test_attackers_cannot_record_revoke_declare_or_review(identity: Any, scene: Scene) -> None:
    # The patient's consent for their own hospital: neither attacker's facility gains anything by it.
    existing = await identity.RecordSharingGrant(
        grant_request(scene, scene.home, grantee_facility_code=scene.home),
        metadata=staff("registrar", scene.home),
    )
    grant_id = existing.sharing_grant.sharing_grant_id
    facilities = {"home": scene.home, "elsewhere": scene.elsewhere}
    wrong: list[str] = []
    for role, where, method, build, expected in ATTACKS:
        got = await code_of(
            getattr(identity, method)(build(scene, grant_id), metadata=staff(role, facilities[where]))
        )
        if got != expected:
            wrong.append(f"{role} of {where} {method}: {got.name}, expected {expected.name}")
    assert wrong == []
    # Nothing the attackers sent was written: the patient still has the one grant, unrevoked.
    listed = await identity.ListSharingGrants(
        pb.ListSharingGrantsRequest(patient_id=scene.patient_id), metadata=staff("registrar", scene.home)
    )
    assert [(g.sharing_grant_id, g.HasField("revoke_time")) for g in listed.sharing_grants] == [
        (grant_id, False)
    ]
    assert await get_patient(identity, scene, staff("nurse", scene.third)) == DENIED


# --- what grants, referrals and emergencies open ---------------------------------------------------


async def test_a_grant_opens_the_patient_to_the_grantee_and_its_revocation_closes_it(
    identity: Any, scene: Scene
) -> None:
    registrar = staff("registrar", scene.home)
    grantee_nurse = staff("nurse", scene.elsewhere)
    assert await get_patient(identity, scene, grantee_nurse) == DENIED
    request = grant_request(scene, scene.home)
    granted = (await identity.RecordSharingGrant(request, metadata=registrar)).sharing_grant
    assert (granted.kind, granted.patient_id, granted.recorded_by_facility_code) == (
        pb.SHARING_GRANT_KIND_CONSENT,
        scene.patient_id,
        scene.home,
    )
    # A repeat returns the first result; the same request_id for other content is refused.
    repeated = (await identity.RecordSharingGrant(request, metadata=registrar)).sharing_grant
    assert repeated == granted
    reused = grant_request(
        scene, scene.home, request_id=request.request_id, grantee_facility_code=scene.third
    )
    assert await code_of(identity.RecordSharingGrant(reused, metadata=registrar)) == grpc.StatusCode.ABORTED

    assert await get_patient(identity, scene, grantee_nurse) == grpc.StatusCode.OK
    # The grant is for treatment: a payment call of the grantee is not covered; nor is a third facility.
    assert await get_patient(identity, scene, staff("nurse", scene.elsewhere, "PAYMENT")) == DENIED
    assert await get_patient(identity, scene, staff("nurse", scene.third)) == DENIED

    revoked = (
        await identity.RevokeSharingGrant(
            pb.RevokeSharingGrantRequest(
                request_id=str(uuid.uuid4()),
                sharing_grant_id=granted.sharing_grant_id,
                facility_code=scene.home,
            ),
            metadata=registrar,
        )
    ).sharing_grant
    assert revoked.HasField("revoke_time") and revoked.revoked_by
    assert await get_patient(identity, scene, grantee_nurse) == DENIED


async def test_two_revocations_at_once_one_wins(identity: Any, scene: Scene) -> None:
    registrar = staff("registrar", scene.home)
    granted = (
        await identity.RecordSharingGrant(grant_request(scene, scene.home), metadata=registrar)
    ).sharing_grant
    revocations = [
        identity.RevokeSharingGrant(
            pb.RevokeSharingGrantRequest(
                request_id=str(uuid.uuid4()),
                sharing_grant_id=granted.sharing_grant_id,
                facility_code=scene.home,
            ),
            metadata=registrar,
        )
        for _ in range(4)
    ]
    codes = await asyncio.gather(*(code_of(call) for call in revocations))
    assert sorted(c.name for c in codes) == ["ABORTED", "ABORTED", "ABORTED", "OK"]


async def test_a_referral_opens_the_patient_to_the_receiving_facility(identity: Any, scene: Scene) -> None:
    receiving_doctor = staff("doctor", scene.elsewhere)
    assert await get_patient(identity, scene, receiving_doctor) == DENIED
    referred = await identity.RecordReferral(
        pb.RecordReferralRequest(
            request_id=str(uuid.uuid4()),
            patient_id=scene.patient_id,
            facility_code=scene.home,
            receiving_facility_code=scene.elsewhere,
            end_time=later(7 * 86400),
        ),
        metadata=staff("doctor", scene.home),
    )
    grant = referred.sharing_grant
    assert (grant.kind, grant.grantee_facility_code, grant.source_facility_code) == (
        pb.SHARING_GRANT_KIND_REFERRAL,
        scene.elsewhere,
        scene.home,
    )
    assert await get_patient(identity, scene, receiving_doctor) == grpc.StatusCode.OK
    checked = await identity.CheckAccess(
        pb.CheckAccessRequest(patient_id=scene.patient_id, facility_code=scene.elsewhere), metadata=platform()
    )
    assert (checked.exists, checked.registered, checked.all_facilities) == (True, False, False)
    assert (list(checked.visible_facility_codes), list(checked.sharing_grant_ids)) == (
        [scene.home],
        [grant.sharing_grant_id],
    )
    assert checked.resolved_patient_id == scene.patient_id


async def test_a_grant_of_a_person_merged_into_another_counts_for_the_survivor(
    identity: Any, scene: Scene, registration: Callable[..., pb.RegisterPatientRequest]
) -> None:
    rng = random.Random(uuid.uuid4().int)
    someone_else = registration(
        scene.third,
        full_name=" ".join(
            (rng.choice(REMAINING_SURNAMES), rng.choice(FEMALE_MIDDLES[4:]), rng.choice(FEMALE_GIVENS))
        ),
        birth_date=f"{rng.randint(1940, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(13, 28):02d}",
        identifiers=[],
    )
    duplicate = (
        await identity.RegisterPatient(someone_else, metadata=staff("registrar", scene.third))
    ).patient.patient_id
    assert duplicate != scene.patient_id
    await identity.RecordSharingGrant(
        grant_request(scene, scene.third, patient_id=duplicate), metadata=staff("registrar", scene.third)
    )
    assert await get_patient(identity, scene, staff("nurse", scene.elsewhere)) == DENIED
    await identity.MergePatients(
        pb.MergePatientsRequest(
            request_id=str(uuid.uuid4()),
            survivor_patient_id=scene.patient_id,
            merged_patient_id=duplicate,
            reason="synthetic duplicate",
        ),
        metadata=caller_metadata("steward", "", ""),
    )
    assert await get_patient(identity, scene, staff("nurse", scene.elsewhere)) == grpc.StatusCode.OK
    # The survivor's grants include the merged person's.
    listed = await identity.ListSharingGrants(
        pb.ListSharingGrantsRequest(patient_id=scene.patient_id), metadata=staff("registrar", scene.home)
    )
    assert [g.patient_id for g in listed.sharing_grants] == [duplicate]


async def test_a_doctor_breaks_the_glass_the_justification_reaches_the_reviewer_alone(
    identity: Any, audit: Any, mongo: Any, scene: Scene
) -> None:
    doctor = staff("doctor", scene.elsewhere)
    assert await get_patient(identity, scene, doctor) == DENIED
    declared = (
        await identity.DeclareEmergencyAccess(emergency_request(scene, scene.elsewhere), metadata=doctor)
    ).emergency_access
    assert declared.justification == "" and declared.reason == pb.EMERGENCY_REASON_UNABLE_TO_CONSENT
    assert declared.end_time.seconds - declared.start_time.seconds == 4 * 3600
    assert await get_patient(identity, scene, doctor) == grpc.StatusCode.OK
    checked = await identity.CheckAccess(
        pb.CheckAccessRequest(patient_id=scene.patient_id, facility_code=scene.elsewhere), metadata=platform()
    )
    assert (checked.all_facilities, checked.emergency_access_id, checked.emergency_reason) == (
        True,
        declared.emergency_access_id,
        "EMERGENCY_REASON_UNABLE_TO_CONSENT",
    )
    exporting = await identity.CheckAccess(
        pb.CheckAccessRequest(patient_id=scene.patient_id, facility_code=scene.elsewhere, export=True),
        metadata=platform(),
    )
    assert (exporting.all_facilities, exporting.emergency_access_id) == (False, "")

    # Stored encrypted; never in an audit event.
    stored = await mongo["emr_identity"]["emergency_accesses"].find_one({"_id": declared.emergency_access_id})
    assert stored["justification"].startswith("enc1:") and "road accident" not in str(stored)

    async def declaration_events() -> list[audit_pb2.AuditEvent] | None:
        events = await events_of(audit, patient_id=scene.patient_id)
        return events if any(e.emergency_access_id == declared.emergency_access_id for e in events) else None

    events = await poll_until(declaration_events)
    assert not [e for e in events if "road accident" in str(e) or b"road accident" in e.SerializeToString()]
    declaration = next(e for e in events if e.operation.endswith("/DeclareEmergencyAccess"))
    assert (declaration.subtype, declaration.break_glass_reason, declaration.resource_id) == (
        audit_pb2.AUDIT_EVENT_SUBTYPE_BREAK_GLASS,
        "EMERGENCY_REASON_UNABLE_TO_CONSENT",
        declared.emergency_access_id,
    )

    # The data-protection officer sees it, with the justification, and reviews it once.
    listed: list[pb.EmergencyAccess] = []
    token = ""
    while True:
        page = await identity.ListEmergencyAccesses(
            pb.ListEmergencyAccessesRequest(unreviewed_only=True, page_size=100, page_token=token),
            metadata=AUDITOR,
        )
        listed.extend(
            e for e in page.emergency_accesses if e.emergency_access_id == declared.emergency_access_id
        )
        token = page.next_page_token
        if not token:
            break
    assert [(e.justification, e.declared_by, e.facility_code) for e in listed] == [
        (JUSTIFICATION, declared.declared_by, scene.elsewhere)
    ]
    review = pb.ReviewEmergencyAccessRequest(
        request_id=str(uuid.uuid4()),
        emergency_access_id=declared.emergency_access_id,
        outcome=pb.EMERGENCY_REVIEW_OUTCOME_UNJUSTIFIED,
        note="No emergency recorded at triage; follow up with the facility",
    )
    reviewed = (await identity.ReviewEmergencyAccess(review, metadata=AUDITOR)).emergency_access
    assert reviewed.review_outcome == pb.EMERGENCY_REVIEW_OUTCOME_UNJUSTIFIED and reviewed.reviewed_by
    assert (await identity.ReviewEmergencyAccess(review, metadata=AUDITOR)).emergency_access == reviewed
    second = pb.ReviewEmergencyAccessRequest(
        request_id=str(uuid.uuid4()),
        emergency_access_id=declared.emergency_access_id,
        outcome=pb.EMERGENCY_REVIEW_OUTCOME_JUSTIFIED,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.ReviewEmergencyAccess(second, metadata=AUDITOR)
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert "already reviewed" in (refused.value.details() or "")


async def test_the_access_report_lists_grant_revocation_referral_and_break_glass(
    identity: Any, audit: Any, scene: Scene
) -> None:
    registrar = staff("registrar", scene.home)
    granted = (
        await identity.RecordSharingGrant(grant_request(scene, scene.home), metadata=registrar)
    ).sharing_grant
    await identity.RevokeSharingGrant(
        pb.RevokeSharingGrantRequest(
            request_id=str(uuid.uuid4()), sharing_grant_id=granted.sharing_grant_id, facility_code=scene.home
        ),
        metadata=registrar,
    )
    referral = (
        await identity.RecordReferral(
            pb.RecordReferralRequest(
                request_id=str(uuid.uuid4()),
                patient_id=scene.patient_id,
                facility_code=scene.home,
                receiving_facility_code=scene.third,
                end_time=later(86400),
            ),
            metadata=staff("doctor", scene.home),
        )
    ).sharing_grant
    declared = (
        await identity.DeclareEmergencyAccess(
            emergency_request(scene, scene.elsewhere), metadata=staff("doctor", scene.elsewhere)
        )
    ).emergency_access
    expected = {
        (audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_GRANT, "Consent", granted.sharing_grant_id, scene.home, ""),
        (
            audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_REVOCATION,
            "Consent",
            granted.sharing_grant_id,
            scene.home,
            "",
        ),
        (audit_pb2.AUDIT_EVENT_SUBTYPE_REFERRAL, "Consent", referral.sharing_grant_id, scene.home, ""),
        (
            audit_pb2.AUDIT_EVENT_SUBTYPE_BREAK_GLASS,
            "EmergencyAccess",
            declared.emergency_access_id,
            scene.elsewhere,
            declared.emergency_access_id,
        ),
    }

    async def reported() -> set[tuple[Any, ...]] | None:
        report = await audit.GetPatientAccessReport(
            audit_pb2.GetPatientAccessReportRequest(patient_id=scene.patient_id, page_size=500),
            metadata=AUDITOR,
        )
        found = {
            (a.subtype, a.resource_type, a.resource_id, a.facility_code, a.emergency_access_id)
            for a in report.accesses
            if a.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS
        }
        return found if expected <= found else None

    await poll_until(reported)
