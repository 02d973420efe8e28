"""MongoDB storage of retention: class floors, legal holds, disposals and their tombstones.

Everything here is insert-only with a unique ``_id`` (FerretDB applies updates non-atomically): a
floor is a fact "<scope>:<id>:<class>"; a hold is lifted by inserting its release; a disposal is its
plan, then its approval, then one decision per episode, then one tombstone per record, then its
certificate, each inserted once, so a crashed disposal resumes where it stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime

from pymongo.errors import DuplicateKeyError

from emr_records.retention import RetentionClass
from emr_runtime.db import Database, Document, insert_or_get

FLOORS = "retention_floors"
HOLDS = "legal_holds"
HOLD_RELEASES = "legal_hold_releases"
DISPOSALS = "disposals"
APPROVALS = "disposal_approvals"
DECISIONS = "disposal_decisions"
TOMBSTONES = "disposed_records"
CERTIFICATES = "disposal_certificates"
RETENTION_COLLECTIONS = (
    FLOORS,
    HOLDS,
    HOLD_RELEASES,
    DISPOSALS,
    APPROVALS,
    DECISIONS,
    TOMBSTONES,
    CERTIFICATES,
)
# Classes a floor can raise a record to (the standard class is no floor).
FLOOR_CLASSES = tuple(c for c in RetentionClass if c is not RetentionClass.STANDARD_10_YEARS)


def floor_key(scope: str, target_id: str, retention_class: RetentionClass) -> str:
    return f"{scope}:{target_id}:{retention_class.value}"


class RetentionRepository:
    def __init__(self, db: Database) -> None:
        self._floors = db[FLOORS]
        self._holds = db[HOLDS]
        self._releases = db[HOLD_RELEASES]
        self._disposals = db[DISPOSALS]
        self._approvals = db[APPROVALS]
        self._decisions = db[DECISIONS]
        self._tombstones = db[TOMBSTONES]
        self._certificates = db[CERTIFICATES]

    # --- floors: "patient" (a death raises all of a patient's records), "record" (explicit class)

    async def raise_floor(
        self,
        scope: str,
        target_id: str,
        retention_class: RetentionClass,
        reason: str,
        source: str,
        at: datetime,
    ) -> None:
        with contextlib.suppress(DuplicateKeyError):  # raised before: a fact is recorded once
            await self._floors.insert_one(
                {
                    "_id": floor_key(scope, target_id, retention_class),
                    "scope": scope,
                    "target_id": target_id,
                    "retention_class": retention_class.value,
                    "reason": reason,
                    "source": source,
                    "at": at,
                }
            )

    async def floors(self, scope: str, target_ids: Iterable[str]) -> dict[str, list[RetentionClass]]:
        """The floors of each target, by `_id` look-ups only."""
        keys = [floor_key(scope, target, c) for target in dict.fromkeys(target_ids) for c in FLOOR_CLASSES]
        found: dict[str, list[RetentionClass]] = {}
        if not keys:
            return found
        async for document in self._floors.find({"_id": {"$in": keys}}):
            found.setdefault(document["target_id"], []).append(RetentionClass(document["retention_class"]))
        return found

    # --- legal holds -----------------------------------------------------------------------------

    async def place_hold(self, hold: Document) -> Document:
        stored, _ = await insert_or_get(self._holds, hold)
        return stored

    async def release_hold(self, release: Document) -> Document:
        stored, _ = await insert_or_get(self._releases, release)
        return stored

    async def hold(self, hold_id: str) -> tuple[Document | None, Document | None]:
        """A hold and its release (None while it stands)."""
        hold = await self._holds.find_one({"_id": hold_id})
        release = await self._releases.find_one({"_id": hold_id}) if hold is not None else None
        return hold, release

    async def standing_holds(self, target_ids: Iterable[str]) -> dict[str, list[str]]:
        """Ids of the holds not lifted, by the patient or encounter id they cover."""
        targets = list(dict.fromkeys(target_ids))
        if not targets:
            return {}
        holds = [h async for h in self._holds.find({"target_id": {"$in": targets}}, {"target_id": 1})]
        if not holds:
            return {}
        released = {
            r["_id"]
            async for r in self._releases.find({"_id": {"$in": [h["_id"] for h in holds]}}, {"_id": 1})
        }
        standing: dict[str, list[str]] = {}
        for hold in holds:
            if hold["_id"] not in released:
                standing.setdefault(hold["target_id"], []).append(hold["_id"])
        return standing

    # --- disposals -------------------------------------------------------------------------------

    async def insert_plan(self, plan: Document) -> Document:
        stored, _ = await insert_or_get(self._disposals, plan)
        return stored

    async def plan(self, disposal_id: str) -> Document | None:
        return await self._disposals.find_one({"_id": disposal_id})

    async def approve(self, approval: Document) -> Document:
        stored, _ = await insert_or_get(self._approvals, approval)
        return stored

    async def approval(self, disposal_id: str) -> Document | None:
        return await self._approvals.find_one({"_id": disposal_id})

    async def decide(self, decision: Document) -> Document:
        """The decision on one episode of a disposal: the first one recorded stands."""
        stored, _ = await insert_or_get(self._decisions, decision)
        return stored

    async def tombstone(self, tombstone: Document) -> None:
        with contextlib.suppress(DuplicateKeyError):  # written by an interrupted run
            await self._tombstones.insert_one(tombstone)

    async def tombstones(self, resource_ids: Iterable[str]) -> dict[str, Document]:
        ids = list(dict.fromkeys(resource_ids))
        if not ids:
            return {}
        return {d["_id"]: d async for d in self._tombstones.find({"_id": {"$in": ids}})}

    async def certify(self, certificate: Document) -> Document:
        stored, _ = await insert_or_get(self._certificates, certificate)
        return stored

    async def certificate(self, disposal_id: str) -> Document | None:
        return await self._certificates.find_one({"_id": disposal_id})
