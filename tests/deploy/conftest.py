"""Fixtures of the deploy proofs: the service images built with podman, and the platform run from
the Helm chart by `podman kube play` (it replaces the process-based `stack` of tests/conftest.py
for the tests in this folder, so the end-to-end smoke runs unchanged against the containers)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emr_devstack.kube import REPO, PodmanPlatform, run
from emr_devstack.stack import START_ORDER, Ports, Stack

# podman storage is machine-wide and other checkouts (sessions, branches) build the same image names at
# the same time: the tests tag their images for this checkout alone, so that no other build retags or
# removes an image between its build here and its run. `make images` (users) keeps the tag `dev`.
IMAGE_TAG = os.environ.get("EMR_IMAGE_TAG") or f"dev-{hashlib.sha256(str(REPO).encode()).hexdigest()[:10]}"


def image_of(service: str) -> str:
    return f"localhost/emr-{service.replace('_', '-')}:{IMAGE_TAG}"


@pytest.fixture(scope="session")
def report(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Prints a figure (step time, image size) to the terminal even while output is captured."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n[deploy] {line}", end="", flush=True)

    return say


@pytest.fixture(scope="session")
def images(report: Callable[[str], None]) -> dict[str, str]:
    """Every service image, built now (podman reuses cached layers; a fresh machine builds all)."""
    started = time.monotonic()
    built = run(
        ["bash", str(REPO / "deploy" / "images" / "build.sh")],
        env={**os.environ, "EMR_IMAGE_TAG": IMAGE_TAG},
        timeout=1800,
    )
    for line in built.splitlines():
        report(line)
    report(f"images built in {time.monotonic() - started:.0f}s")
    return {service: image_of(service) for service in START_ORDER}


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """FerretDB alone, on a free loopback port: the 'existing MongoDB' the containers are given."""
    database = Stack(run_dir=Path(tmp_path_factory.mktemp("ferretdb")), ports=Ports.free())
    try:
        database.start_ferretdb()
        yield database
    finally:
        database.stop()


@pytest.fixture(scope="session")
def stack(
    images: dict[str, str],
    ferretdb: Stack,
    tmp_path_factory: pytest.TempPathFactory,
    report: Callable[[str], None],
) -> Iterator[PodmanPlatform]:
    platform = PodmanPlatform(
        run_dir=Path(tmp_path_factory.mktemp("podman")),
        # A release name of this run alone: pod names never clash with another run on the machine.
        release=f"ci-{uuid.uuid4().hex[:6]}",
        ports=Ports.free(),
        mongodb_uri=ferretdb.effective_mongodb_uri,
        image_tag=IMAGE_TAG,
    )
    try:
        started = time.monotonic()
        platform.start()
        report(f"podman kube play: every pod healthy in {time.monotonic() - started:.1f}s")
        yield platform
    finally:
        started = time.monotonic()
        platform.stop()
        report(f"podman kube down in {time.monotonic() - started:.1f}s")
