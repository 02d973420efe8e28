"""Every database call of the identity repository is keyed by ``_id``: no RPC can scan a collection.
Checked on the code (pure, no I/O); test_identity_linkage checks with explain that the database
serves such a lookup without a scan."""

from __future__ import annotations

import ast
import inspect

from emr_identity import repository

READS = {"find", "find_one", "count_documents", "aggregate", "distinct", "find_one_and_update"}
KEYED_WRITES = {"update_one", "update_many", "delete_one", "delete_many", "find_one_and_update"}


def calls() -> list[ast.Call]:
    tree = ast.parse(inspect.getsource(repository))
    return [
        node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]


def first_key(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Dict) and call.args[0].keys:
        key = call.args[0].keys[0]
        return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
    return None


def test_the_only_read_is_the_id_lookup_primitive() -> None:
    reads = [c for c in calls() if isinstance(c.func, ast.Attribute) and c.func.attr in READS]
    assert len(reads) == 1
    assert first_key(reads[0]) == "_id"


def test_every_update_and_delete_is_keyed_by_id() -> None:
    keyed = [c for c in calls() if isinstance(c.func, ast.Attribute) and c.func.attr in KEYED_WRITES]
    assert keyed
    for call in keyed:
        assert first_key(call) == "_id", ast.unparse(call)
