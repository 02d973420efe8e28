"""docs/access-model.md shows the policy table the code applies, row for row."""

from __future__ import annotations

from pathlib import Path

from emr_runtime.policy import markdown_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "access-model.md"


def test_the_documented_policy_table_is_the_code_s() -> None:
    documented = DOC.read_text().partition("## The policy table")[2]
    assert markdown_table() in documented, (
        "docs/access-model.md's policy table differs from emr_runtime.policy: "
        "regenerate it with `.venv/bin/python -m emr_runtime.policy`"
    )
