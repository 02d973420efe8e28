"""Identity use cases: coordinate the pure domain with the repository."""

from __future__ import annotations

from emr_identity.domain import (
    Outcome,
    Person,
    PersonStatus,
    RegistrationInput,
    check_patient_id,
    new_person,
    validate_registration,
)
from emr_identity.repository import PersonRepository
from emr_runtime.clock import utc_now
from emr_runtime.errors import ConflictError, NotFoundError
from emr_runtime.idempotency import derive_id


class IdentityService:
    def __init__(self, persons: PersonRepository) -> None:
        self._persons = persons

    async def register(self, raw: RegistrationInput) -> tuple[Person, Outcome]:
        """Registers a person once per request_id; a CCCD or facility MRN already registered
        resolves to its person. Safe under concurrency without transactions: the person is
        written provisional, its unique identifiers are claimed through a unique _id, and only
        then is it activated."""
        now = utc_now()
        registration = validate_registration(raw, now.date())
        candidate = new_person(registration, derive_id("person", registration.request_id), now)
        stored = await self._persons.insert_or_get(candidate)
        if stored.request_fingerprint != candidate.request_fingerprint:
            raise ConflictError("request_id was already used for a different registration", "request_id")
        if stored.status is PersonStatus.ACTIVE:
            return stored, Outcome.CREATED
        if stored.status is PersonStatus.SUPERSEDED:
            return await self._resolved(stored.superseded_by), Outcome.EXISTING
        for claim_key in stored.claim_keys:
            owner_id = await self._persons.claim(claim_key, stored.person_id)
            if owner_id != stored.person_id:
                # The owner may have stopped before activating; its document is complete, so finish it.
                await self._persons.activate(owner_id)
                if await self._persons.supersede(stored.person_id, owner_id):
                    await self._persons.release_claims(stored.person_id)
                    return await self._resolved(owner_id), Outcome.EXISTING
                # A rival registration already resolved to this person (it won an earlier claim), so
                # it stays; the contested identifier is left to review (identity matching issue).
        await self._persons.activate(stored.person_id)
        return await self._resolved(stored.person_id), Outcome.CREATED

    async def _resolved(self, person_id: str) -> Person:
        person = await self._persons.get(person_id)
        assert person is not None and person.status is PersonStatus.ACTIVE  # activated just before
        return person

    async def get(self, patient_id: str) -> Person:
        person = await self._persons.get(check_patient_id(patient_id))
        if person is None or person.status is not PersonStatus.ACTIVE:
            raise NotFoundError("Patient", "patient_id", patient_id)
        return person
