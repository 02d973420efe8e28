"""skaffold.yaml: valid against skaffold's own schema (apiVersion skaffold/v4beta14), with each
profile applied too; and consistent with the chart: one artifact per chart service, image values
that exist, port-forwards to Services the chart makes, a verify step that checks every service."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from emr_devstack.kube import CHART, REPO, helm, render, validate_manifests
from emr_devstack.stack import START_ORDER

CONFIG: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
CONFIG_VERSION = CONFIG["apiVersion"].replace("/", "-")  # skaffold/v4beta14 -> skaffold-v4beta14

# The facts of skaffold's format (field names, types, required keys) for the apiVersion we use.
SCHEMA = REPO / "deploy" / "skaffold" / f"{CONFIG_VERSION}.schema.json"
PROFILES = {profile["name"]: profile for profile in CONFIG["profiles"]}


def with_profile(name: str) -> dict[str, Any]:
    """The config as skaffold sees it with ``-p name``: the profile's JSON patches applied."""
    config: dict[str, Any] = copy.deepcopy(CONFIG)
    for patch in PROFILES[name].get("patches", []):
        *parents, last = patch["path"].strip("/").split("/")
        node: Any = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if patch["op"] == "replace":
            assert last in node, f"profile {name}: {patch['path']} replaces nothing"
        else:
            assert patch["op"] == "add", patch
        node[last] = patch["value"]
    return config


def validator() -> jsonschema.Draft7Validator:
    assert SCHEMA.exists(), f"no schema of {CONFIG['apiVersion']} in the project: {SCHEMA}"
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_valid_against_skaffold_schema(profile: str | None) -> None:
    config = with_profile(profile) if profile else CONFIG
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator().iter_errors(config)]
    assert errors == []


def test_schema_rejects_a_misspelt_key() -> None:
    broken = copy.deepcopy(CONFIG)
    broken["deploy"]["helm"]["releases"][0]["valueFiles"] = broken["deploy"]["helm"]["releases"][0].pop(
        "valuesFiles"
    )
    assert list(validator().iter_errors(broken))


def test_one_artifact_per_chart_service_and_image_values_that_exist() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    artifacts = {artifact["image"]: artifact for artifact in CONFIG["build"]["artifacts"]}
    assert set(artifacts) == {values["services"][service]["image"]["repository"] for service in START_ORDER}
    for service in START_ORDER:
        artifact = artifacts[values["services"][service]["image"]["repository"]]
        assert artifact["docker"]["buildArgs"] == {"SERVICE": service}
        assert (REPO / artifact["context"] / artifact["docker"]["dockerfile"]).exists()
    release = CONFIG["deploy"]["helm"]["releases"][0]
    templates = release["setValueTemplates"]
    for key in templates:
        node = values
        for part in key.split("."):
            assert part in node, f"setValueTemplates {key}: no such value"
            node = node[part]
    for artifact in artifacts:
        variable = artifact.replace("-", "_")
        assert f"{{{{.IMAGE_REPO_{variable}}}}}" in templates.values()
        assert f"{{{{.IMAGE_TAG_{variable}}}}}" in templates.values()


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_values_files_of_each_profile_lint_and_validate(profile: str | None) -> None:
    config = with_profile(profile) if profile else CONFIG
    release = config["deploy"]["helm"]["releases"][0]
    files = [REPO / path for path in release["valuesFiles"]]
    helm("lint", "--strict", str(CHART), *[arg for path in files for arg in ("-f", str(path))])
    manifests = render(files, release=release["name"])
    assert validate_manifests(manifests) == []


def test_port_forwards_and_verify_reach_every_service() -> None:
    release = CONFIG["deploy"]["helm"]["releases"][0]
    manifests = render([REPO / path for path in release["valuesFiles"]], release=release["name"])
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    forwarded = {}
    for forward in CONFIG["portForward"]:
        assert forward["namespace"] == release["namespace"]
        ports = [port["port"] for port in services[forward["resourceName"]]["spec"]["ports"]]
        assert forward["port"] in ports, forward
        forwarded[forward["resourceName"]] = forward["port"]
    assert len(forwarded) == len(START_ORDER)

    # Verify asks gRPC services on their plaintext health port (the API port requires a client certificate).
    health_ports = {
        name: next((port["port"] for port in service["spec"]["ports"] if port["name"] == "health"), None)
        for name, service in services.items()
    }
    checked = {arg.split("=")[1] for arg in CONFIG["verify"][0]["container"]["args"] if "=" in arg}
    assert checked == {
        f"{name}.{release['namespace']}:{health_ports[name] or port}" for name, port in forwarded.items()
    }
    job = yaml.safe_load(
        (REPO / CONFIG["verify"][0]["executionMode"]["kubernetesCluster"]["jobManifestPath"]).read_text()
    )
    labels = job["spec"]["template"]["metadata"]["labels"]
    # The chart's NetworkPolicies admit the release's helm-test pods: the verify Job is one.
    assert labels == {
        "app.kubernetes.io/instance": release["name"],
        "app.kubernetes.io/component": "helm-test",
    }
    assert job["metadata"]["namespace"] == release["namespace"]


def test_kind_cluster_pins_its_node_image() -> None:
    cluster = yaml.safe_load((REPO / "deploy" / "kind" / "cluster.yaml").read_text())
    images = {node["image"] for node in cluster["nodes"]}
    assert len(images) == 1
    image = images.pop()
    assert image.startswith("kindest/node:v1.37.0@sha256:") and len(image.split("@sha256:")[1]) == 64
    assert with_profile("kind")["deploy"]["kubeContext"] == f"kind-{cluster['name']}"
