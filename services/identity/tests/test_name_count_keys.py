"""Name parts become field names of the name-counts document: whatever a name holds, its key is no
path, operator or invalid field name, and reads back as the name (pure, no I/O)."""

from __future__ import annotations

import pytest

from emr_identity.repository import name_count_key, name_of_count_key


@pytest.mark.parametrize(
    "name",
    ["nguyen", "$where", "a.b", ".a.b", "$", "%", "%2E", "%25", "a%24b", "x\x00y", "$set.$inc", "thị", ""],
)
def test_any_name_is_a_safe_key_that_reads_back(name: str) -> None:
    key = name_count_key(name)
    assert not key.startswith("$")
    assert "." not in key
    assert "\x00" not in key
    assert name_of_count_key(key) == name


def test_distinct_names_keep_distinct_keys() -> None:
    names = ["a.b", "a%2Eb", "a%252Eb", "a b", "a$b", "a%24b"]
    assert len({name_count_key(n) for n in names}) == len(names)


def test_plain_names_are_stored_as_they_are() -> None:
    # Existing counts documents stay readable: ordinary names need no escape.
    assert name_count_key("nguyen") == "nguyen"
    assert name_of_count_key("tran thi") == "tran thi"
