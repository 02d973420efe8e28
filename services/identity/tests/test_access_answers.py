"""Identity keeps access answers that open something, briefly, and forgets them when who-sees-whom
changes here (no I/O: the answer itself is stubbed)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from emr_identity.sharing_service import SharingService
from emr_runtime.visibility import Visibility


class CountingSharing(SharingService):
    """A sharing service whose uncached answer comes from a table, counting how often it is asked."""

    def __init__(self, answers: dict[str, Visibility]) -> None:
        self.identity: Any = SimpleNamespace(links_changed=[])
        super().__init__(self.identity, None, None, timedelta(hours=4))  # type: ignore[arg-type]
        self.answers = answers
        self.asked = 0

    async def _visibility(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        self.asked += 1
        return self.answers[patient_id]


def ask(sharing: SharingService, patient_id: str, times: int = 3) -> Visibility:
    async def run() -> Visibility:
        found = Visibility("79001")
        for _ in range(times):
            found = await sharing.visibility(patient_id, "79001", "", False)
        return found

    return asyncio.run(run())


def test_an_answer_that_opens_something_is_kept() -> None:
    sharing = CountingSharing({"p": Visibility("79001", registered=True)})
    assert ask(sharing, "p").registered
    assert sharing.asked == 1


def test_an_answer_that_opens_nothing_or_that_an_emergency_opened_is_asked_again() -> None:
    emergency = Visibility("79001", all_facilities=True, emergency_access_id="e", emergency_reason="R")
    sharing = CountingSharing({"stranger": Visibility("79001"), "er": emergency})
    ask(sharing, "stranger")
    assert sharing.asked == 3
    ask(sharing, "er")
    assert sharing.asked == 6


def test_a_grant_or_a_merge_here_forgets_every_kept_answer() -> None:
    sharing = CountingSharing({"p": Visibility("79001", registered=True)})
    ask(sharing, "p", 1)
    sharing.forget_answers()  # what recording a grant, a revocation or a declaration does
    ask(sharing, "p", 1)
    for listener in sharing.identity.links_changed:  # what a merge or an unmerge does
        listener()
    ask(sharing, "p", 1)
    assert sharing.asked == 3
