"""The service images, built with podman from the local base image: small, non-root, no build tools,
and each one started on its own answers health SERVING (gRPC) or /healthz (HTTP)."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
from packaging.requirements import Requirement

from emr_devstack.kube import REPO, podman, podman_env, run, wait_for
from emr_devstack.processes import free_port, grpc_serving
from emr_devstack.stack import (
    DEV_FIELD_ENCRYPTION,
    FIELD_ENCRYPTING_SERVICES,
    GRPC_SERVICES,
    START_ORDER,
    Stack,
)

# On a fresh machine the session's first test also builds the base image and every image (minutes).
pytestmark = pytest.mark.timeout(1800)
MAX_IMAGE_BYTES = 250 * 1000 * 1000
# Settings each image is started with: its own free ports on the host network.
PORT_VARIABLES = {
    "audit": ("AUDIT_GRPC_PORT", "AUDIT_METRICS_PORT"),
    "identity": ("IDENTITY_GRPC_PORT", "IDENTITY_METRICS_PORT"),
    "records": ("RECORDS_GRPC_PORT", "RECORDS_METRICS_PORT"),
    "sync": ("SYNC_GRPC_PORT", "SYNC_METRICS_PORT"),
    "gateway": ("GATEWAY_PORT",),
    "national_emulator": ("NATIONAL_EMULATOR_PORT",),
}


def inspect(image: str) -> dict[str, object]:
    details: list[dict[str, object]] = json.loads(podman("image", "inspect", image))
    return details[0]


@pytest.mark.parametrize("service", START_ORDER)
def test_image_is_small_non_root_and_without_build_tools(images: dict[str, str], service: str) -> None:
    image = images[service]
    details = inspect(image)
    size = details["Size"]
    assert isinstance(size, int)
    assert size <= MAX_IMAGE_BYTES, f"{image}: {size / 1e6:.1f} MB"
    config = details["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/venv/bin/emr-service"]
    found = podman(
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "for tool in gcc cc c++ make uv pip git; do command -v $tool; done; ls /src 2>/dev/null; id -u",
    ).split()
    assert found == ["10001"], f"{image} carries {found[:-1]}"


@pytest.fixture
def started(images: dict[str, str], ferretdb: Stack) -> Iterator[dict[str, int]]:
    """Every image started alone (no peers) with read-only root and no capabilities; their ports."""
    run_id = uuid.uuid4().hex[:6]
    ports: dict[str, int] = {}
    names = []
    try:
        for service in START_ORDER:
            # They refuse to start without token keys (the published development key) and, those that
            # store identifiers, without field encryption keys.
            env = {"MONGODB_URI": ferretdb.effective_mongodb_uri, "AUTH_DEV_KEYS": "true"}
            if service in FIELD_ENCRYPTING_SERVICES:
                env.update(DEV_FIELD_ENCRYPTION)
            for variable in PORT_VARIABLES[service]:
                env[variable] = str(free_port())
            ports[service] = int(env[PORT_VARIABLES[service][0]])
            name = f"emr-image-test-{run_id}-{service.replace('_', '-')}"
            podman(
                "run",
                "-d",
                "--pull=never",
                "--network=host",
                "--read-only",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
                "--name",
                name,
                *[arg for key, value in env.items() for arg in ("-e", f"{key}={value}")],
                images[service],
            )
            names.append(name)
        yield ports
    finally:
        for name in names:
            run(["podman", "rm", "-f", "-t", "5", name], env=podman_env())


def workspace_closure(distribution: str) -> set[str]:
    """The workspace members (`emr-*` distributions) ``distribution`` needs, itself included, as
    services/*/pyproject.toml declare them."""
    declared: dict[str, list[str]] = {}
    for pyproject in (REPO / "services").glob("*/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        declared[project["name"]] = [Requirement(text).name for text in project["dependencies"]]
    needed, todo = set(), [distribution]
    while todo:
        name = todo.pop()
        if name in declared and name not in needed:
            needed.add(name)
            todo.extend(declared[name])
    return needed


# Imports every module of the service package (not __main__, which starts the server) and prints the
# workspace distributions installed: a module importing a package the image lacks fails here.
IMPORT_EVERYTHING = """
import importlib, importlib.metadata, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print(json.dumps(sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                        if d.metadata["Name"].startswith("emr-"))))
"""


@pytest.mark.parametrize("service", START_ORDER)
def test_image_holds_exactly_the_workspace_packages_its_service_imports(
    images: dict[str, str], service: str
) -> None:
    installed = podman(
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--read-only",
        "--entrypoint",
        "/opt/venv/bin/python",
        images[service],
        "-c",
        IMPORT_EVERYTHING,
        f"emr_{service}",
    )
    distribution = f"emr-{service.replace('_', '-')}"
    assert set(json.loads(installed)) == workspace_closure(distribution)


def test_each_image_starts_and_answers_health(started: dict[str, int]) -> None:
    for service, port in started.items():
        if service in GRPC_SERVICES:
            wait_for(partial(grpc_serving, f"127.0.0.1:{port}"), 60, f"{service} SERVING", str)
        else:
            wait_for(partial(_answers, f"http://127.0.0.1:{port}/healthz"), 60, f"{service} /healthz", str)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
