"""The Helm chart, rendered and run without a cluster: `helm template` of charts/emr-platform, and
the platform as pods under `podman kube play` on the host network (the CI proof of the chart and
the images). Works from a source checkout, where the chart and deploy/ live."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from emr_devstack.certs import DevCertificates, ensure_dev_certificates
from emr_devstack.processes import grpc_serving, port_open
from emr_devstack.stack import CACHE_BIN, GRPC_SERVICES, Ports

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "emr-platform"
HELM = CACHE_BIN / "helm"
PODMAN_CONF = REPO / "deploy" / "podman" / "containers.conf"
# The kinds `podman kube play` (4.3) runs; it refuses or ignores the others (Service, NetworkPolicy...).
PODMAN_PLAYABLE = ("Deployment",)

# The Kubernetes version manifests are validated against: the one deploy/kind/cluster.yaml pins.
KUBERNETES_VERSION = "1.37.0"
# Prometheus Operator kinds: kubernetes-validate has no schema for them (tests check their shape).
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
}

Manifest = dict[str, Any]


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Runs a tool; a failure raises with the tool's own output, so the log says what broke."""
    result = subprocess.run(  # noqa: S603 - argv is ours
        list(argv), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise ToolError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


class ToolError(RuntimeError):
    """helm, podman or a script failed."""


def helm(*args: str) -> str:
    if not HELM.exists():
        raise FileNotFoundError(f"{HELM} is missing: run scripts/bootstrap.sh (make bootstrap)")
    return run([str(HELM), *args])


def values_args(values_files: Sequence[Path] = (), settings: dict[str, str] | None = None) -> list[str]:
    """`-f FILE` for each values file, `--set KEY=VALUE` for each setting (typed as YAML reads it)."""
    args = [arg for path in values_files for arg in ("-f", str(path))]
    return args + [arg for key, value in (settings or {}).items() for arg in ("--set", f"{key}={value}")]


def render(
    values_files: Sequence[Path] = (), settings: dict[str, str] | None = None, release: str = "emr"
) -> list[Manifest]:
    """`helm template` of the chart, parsed: every non-empty document."""
    text = helm("template", release, str(CHART), *values_args(values_files, settings))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate_manifests(manifests: Sequence[Manifest]) -> list[str]:
    """Every manifest against the Kubernetes schemas, strictly (unknown fields are errors); returns
    the problems found. Needs the dev dependency kubernetes-validate."""
    import kubernetes_validate  # type: ignore[import-untyped]
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError  # type: ignore[import-untyped]

    problems = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except SchemaNotFoundError:
            if (manifest["apiVersion"], manifest["kind"]) not in CUSTOM_KINDS:
                problems.append(f"{manifest['kind']} {manifest['apiVersion']}: no schema")
        except ValidationError as error:
            problems.append(
                f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message} at {list(error.path)}"
            )
    return problems


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(PODMAN_CONF)}


def podman(*args: str, timeout: float = 900) -> str:
    return run(["podman", *args], env=podman_env(), timeout=timeout)


def wait_for(condition: Callable[[], bool], seconds: float, what: str, diagnose: Callable[[], str]) -> None:
    """Polls ``condition`` until it holds; after ``seconds`` fails with ``diagnose()`` in the message."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {seconds:.0f}s\n{diagnose()}")
        time.sleep(0.2)


@dataclass
class PodmanPlatform(DevCertificates):
    """The chart rendered with ``ci/podman-values.yaml`` and run by ``podman kube play``: every
    service as a pod on the host network, bound to 127.0.0.1 on ``ports``, using the MongoDB at
    ``mongodb_uri`` through the chart's Secret, mounting the development certificates of
    ``certs_dir`` (tls.source=hostPath). Answers ``target``/``url`` like ``Stack``."""

    run_dir: Path
    release: str
    ports: Ports
    mongodb_uri: str
    # Tag of the locally built images (deploy/images/build.sh, EMR_IMAGE_TAG).
    image_tag: str = "dev"
    sync_poll_interval: float = 0.2
    manifests: list[Manifest] = field(default_factory=list)

    @property
    def effective_mongodb_uri(self) -> str:
        return self.mongodb_uri

    def target(self, service: str) -> str:
        return f"127.0.0.1:{getattr(self.ports, service)}"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

    def settings(self) -> dict[str, str]:
        """The values that put the services on this platform's ports and database."""
        p = self.ports
        chosen = {
            "mongodb.uri": self.mongodb_uri,
            "image.tag": self.image_tag,
            "services.sync.env.SYNC_POLL_INTERVAL_SECONDS": str(self.sync_poll_interval),
            "services.gateway.port": str(p.gateway),
            "services.national_emulator.port": str(p.national_emulator),
            "tls.hostPath": str(self.certs_dir),
        }
        for service in GRPC_SERVICES:
            chosen[f"services.{service}.port"] = str(getattr(p, service))
            chosen[f"services.{service}.metricsPort"] = str(getattr(p, f"{service}_metrics"))
            chosen[f"services.{service}.healthPort"] = str(getattr(p, f"{service}_health"))
        return chosen

    def render(self) -> list[Manifest]:
        self.manifests = render([CHART / "ci" / "podman-values.yaml"], self.settings(), self.release)
        return self.manifests

    def _write(self, name: str, manifests: Sequence[Manifest]) -> Path:
        path = self.run_dir / name
        path.write_text(yaml.safe_dump_all(manifests))
        return path

    @property
    def _workloads_file(self) -> Path:
        return self.run_dir / "workloads.yaml"

    def start(self, seconds: float = 90) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ensure_dev_certificates(self.certs_dir)
        # The pods run as user 10001 and read the keys from this host folder (the test's own).
        for key in self.certs_dir.glob("*-key.pem"):
            key.chmod(0o644)
        manifests = self.render()
        # podman 4.3 reads a secretKeyRef from its own secret store, as JSON of base64 values; it
        # cannot read back a Secret it played itself. The chart's Secrets go in that way. (It cannot
        # mount a Secret as files at all: kube play crashes; the podman values let audit generate
        # its signing key in an emptyDir instead.)
        for secret in (m for m in manifests if m["kind"] == "Secret"):
            data = {
                **secret.get("data", {}),
                **{
                    key: base64.b64encode(value.encode()).decode()
                    for key, value in secret.get("stringData", {}).items()
                },
            }
            secret_file = self.run_dir / f"secret-{secret['metadata']['name']}.json"
            secret_file.write_text(json.dumps(data))
            podman("secret", "create", secret["metadata"]["name"], str(secret_file))
            secret_file.unlink()
        workloads = self._write("workloads.yaml", [m for m in manifests if m["kind"] in PODMAN_PLAYABLE])
        podman("kube", "play", "--network", "host", str(workloads))
        credentials = self.client_tls.channel_credentials()
        for service in GRPC_SERVICES:
            serving = partial(grpc_serving, self.target(service), credentials=credentials)
            wait_for(serving, seconds, f"{service} SERVING", self.logs)
        for service in ("gateway", "national_emulator"):
            wait_for(
                partial(port_open, getattr(self.ports, service)), seconds, f"{service} listening", self.logs
            )

    def run_test_hook(self) -> str:
        """Plays the chart's `helm test` pod; returns its output, raises unless it exits 0."""
        hooks = [
            m for m in self.manifests if m["kind"] == "Pod" and "helm.sh/hook" in m["metadata"]["annotations"]
        ]
        assert len(hooks) == 1, hooks
        hook = hooks[0]
        container = f"{hook['metadata']['name']}-{hook['spec']['containers'][0]['name']}"
        podman("kube", "play", "--network", "host", str(self._write("test-hook.yaml", hooks)))
        try:
            exit_code = podman("wait", container, timeout=120).strip()
            output = podman("logs", container)
        finally:
            podman("kube", "down", str(self.run_dir / "test-hook.yaml"))
        if exit_code != "0":
            raise ToolError(f"helm test pod exited {exit_code}:\n{output}")
        return output

    def inspect(self, container: str) -> tuple[str, bool, list[str]]:
        """A running container's user, whether its root filesystem is read-only, its capabilities."""
        details = json.loads(podman("inspect", container))[0]
        return (
            details["Config"]["User"],
            details["HostConfig"]["ReadonlyRootfs"],
            details["EffectiveCaps"] or [],
        )

    def logs(self) -> str:
        """Every container's state and last log lines, for failure messages."""
        listing = podman("ps", "-a", "--filter", f"name={self.release}", "--format", "{{.Names}} {{.Status}}")
        parts = [listing]
        for name in listing.split():
            if name.startswith(self.release) and not name.endswith("-infra"):
                result = subprocess.run(  # noqa: S603 - argv is ours
                    ["podman", "logs", "--tail", "20", name],  # noqa: S607 - podman from PATH, as everywhere
                    capture_output=True,
                    text=True,
                    env=podman_env(),
                    check=False,
                )
                parts.append(f"--- {name}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Tears every pod and the secret down (what kube play made, nothing else)."""
        if self._workloads_file.exists():
            podman("kube", "down", str(self._workloads_file))
        for secret in (m for m in self.manifests if m["kind"] == "Secret"):
            run(["podman", "secret", "rm", secret["metadata"]["name"]], env=podman_env())
