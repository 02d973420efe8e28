"""The chart run as containers: rendered with ci/podman-values.yaml, played by `podman kube play`
(conftest.py `stack`), then the same end-to-end smoke the process-based platform passes
(tests/integration/test_slice.py, imported unchanged), the chart's `helm test` pod, and teardown."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from emr_devstack.kube import PodmanPlatform
from emr_devstack.stack import START_ORDER

# On a fresh machine the session's first test also builds the base image and every image (minutes).
pytestmark = pytest.mark.timeout(1800)


def _load_slice_tests() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "integration" / "test_slice.py"
    spec = importlib.util.spec_from_file_location("emr_slice_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_slice = _load_slice_tests()
# The end-to-end smoke, as it runs against the process stack; here `stack` is the podman platform.
test_register_encounter_audit_and_national_delivery = (
    _slice.test_register_encounter_audit_and_national_delivery
)
test_gateway_serves_patient_as_fhir_r4 = _slice.test_gateway_serves_patient_as_fhir_r4


def test_helm_test_hook_passes_against_the_running_pods(stack: PodmanPlatform) -> None:
    output = stack.run_test_hook()
    assert sorted(line.split()[0] for line in output.splitlines()) == sorted(START_ORDER)
    assert all(line.split()[-1] == "SERVING" for line in output.splitlines())


def test_pods_run_locked_down(stack: PodmanPlatform) -> None:
    for service in START_ORDER:
        container = (
            f"{stack.release}-emr-platform-{service.replace('_', '-')}-pod-0-{service.replace('_', '-')}"
        )
        user, read_only, capabilities = stack.inspect(container)
        assert (user, read_only, capabilities) == ("10001:10001", True, []), container
