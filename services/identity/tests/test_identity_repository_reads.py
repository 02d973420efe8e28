"""Every database call of the identity repository filters on exactly ``{"_id": value}``, the only
filter FerretDB 1.x hands to its backend: no RPC can scan a collection. Checked on the code (pure,
no I/O); tests/integration/test_identity_linkage.py checks with explain, on the queries the RPCs
really issue, that the database serves each without a scan."""

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


def filter_keys(call: ast.Call) -> list[str | None]:
    """The keys of the call's filter (its first argument), None for one that is not a literal."""
    if call.args and isinstance(call.args[0], ast.Dict):
        return [
            k.value if isinstance(k, ast.Constant) and isinstance(k.value, str) else None
            for k in call.args[0].keys
        ]
    return [None]


def test_the_only_read_is_the_id_lookup_primitive() -> None:
    reads = [c for c in calls() if isinstance(c.func, ast.Attribute) and c.func.attr in READS]
    assert len(reads) == 1
    assert filter_keys(reads[0]) == ["_id"]


def test_every_update_and_delete_filters_on_the_id_alone() -> None:
    keyed = [c for c in calls() if isinstance(c.func, ast.Attribute) and c.func.attr in KEYED_WRITES]
    assert keyed
    for call in keyed:
        assert filter_keys(call) == ["_id"], ast.unparse(call)
