"""The README's "Chart values" tables name every key values.schema.json allows."""

from __future__ import annotations

import json
from typing import Any

from emr_devstack.kube import CHART, REPO

# Free-form values (maps and lists of Kubernetes objects): documented as a whole, not key by key.
FREE_FORM = {"object", "array"}


def schema_keys(schema: dict[str, Any], root: dict[str, Any], prefix: str = "") -> list[str]:
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    properties = schema.get("properties")
    if not properties:
        return [prefix]
    keys = []
    for name, child in properties.items():
        keys.extend(schema_keys(child, root, f"{prefix}.{name}" if prefix else name))
    return keys


def test_every_chart_value_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = REPO.joinpath("README.md").read_text()
    section = readme[readme.index("### Chart values") :]
    service_table = section[section.index("Each of `services.identity`") :]
    missing = []
    for key in schema_keys(schema, schema):
        if key.startswith("services."):
            _, service, *rest = key.split(".")
            assert f"`services.{service}`" in section, service
            field = ".".join(rest)
            head, _, tail = field.partition(".")
            # `autoscaling.enabled`, `.minReplicas`: a group's first key in full, the others by suffix.
            documented = f"`{field}`" in service_table or (
                bool(tail) and f"`.{tail}`" in service_table and f"`{head}." in service_table
            )
        else:
            documented = f"| `{key}` |" in section
        if not documented:
            missing.append(key)
    assert missing == []
