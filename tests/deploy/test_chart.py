"""The Helm chart: lint and render with every CI values file, validate every manifest against the
Kubernetes schemas, reject unknown values, and carry every service of the platform with the same
settings, call graph and security defaults the rest of the project has."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from emr_audit.signing import load_signer
from emr_devstack.kube import CHART, ToolError, helm, render, validate_manifests
from emr_devstack.stack import GRPC_SERVICES, START_ORDER, Ports, Stack
from emr_runtime.auth import SERVICE_ASSERTED_ROLES, service_binding
from emr_sync.claim_signing import load_signing_keys

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
DEV_VALUES = CHART / "ci" / "dev-values.yaml"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
# Who calls whom (README, "How it is built"); the national system is the emulator in dev.
CALL_GRAPH = {
    "identity": {"audit"},
    "records": {"identity", "audit"},
    "audit": set(),
    "sync": {"records", "identity", "national_emulator", "audit"},
    "gateway": {"identity", "records", "audit"},
    "national_emulator": set(),
}

# What the process stack sets that the chart leaves to the image or to the default: the image sets
# PYTHONUNBUFFERED; tests poll faster than production needs.
NOT_FOR_THE_CHART = {"PYTHONUNBUFFERED", "SYNC_POLL_INTERVAL_SECONDS"}

Manifest = dict[str, Any]


def component(manifest: Manifest) -> str:
    return str(manifest["metadata"]["labels"]["app.kubernetes.io/component"]).replace("-", "_")


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {component(m): m for m in manifests if m["kind"] == kind}


def chart_gaps(manifests: list[Manifest]) -> list[str]:
    """What the rendered chart lacks against the process-based platform (emr_devstack): a
    Deployment per service, with every variable `Stack.service_env` sets."""
    deployments = of_kind(manifests, "Deployment")
    gaps = []
    reference = Stack(run_dir=Path("unused"))
    for service in START_ORDER:
        if service not in deployments:
            gaps.append(f"{service}: no Deployment")
            continue
        container = deployments[service]["spec"]["template"]["spec"]["containers"][0]
        set_here = {variable["name"] for variable in container.get("env", [])}
        needed = set(reference.service_env(service)) - NOT_FOR_THE_CHART
        if service not in GRPC_SERVICES:  # the HTTP components keep no data
            needed.discard("MONGODB_URI")
        gaps.extend(f"{service}: {name} not set" for name in sorted(needed - set_here))
    return gaps


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_lints_renders_and_validates_with_ci_values(values: Path) -> None:
    helm("lint", "--strict", str(CHART), "-f", str(values))
    manifests = render([values])
    assert of_kind(manifests, "Deployment"), "nothing rendered"
    assert validate_manifests(manifests) == []


def test_validation_rejects_what_kubernetes_would() -> None:
    deployment = next(m for m in render([DEV_VALUES]) if m["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["replicass"] = misspelt["spec"].pop("replicas")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "fifty"
    assert validate_manifests([deployment]) == []
    assert len(validate_manifests([misspelt])) == 1
    assert len(validate_manifests([wrong_type])) == 1


@pytest.mark.parametrize(
    "typo",
    [
        "services.identity.replica=3",
        "mongodb.existingSecrte=emr",
        "observabilty.otlpEndpoint=x",
        "services.idenity.port=1",
    ],
)
def test_unknown_values_key_fails_lint_and_template(typo: str) -> None:
    args = [str(CHART), "-f", str(DEV_VALUES), "--set", typo]
    with pytest.raises(ToolError, match=r"additional properties .* not allowed"):
        helm("lint", "--strict", *args)
    with pytest.raises(ToolError, match=r"additional properties .* not allowed"):
        helm("template", "emr", *args)


def test_without_a_database_the_render_fails_with_the_way_out() -> None:
    with pytest.raises(ToolError, match=r"mongodb\.existingSecret"):
        helm("template", "emr", str(CHART))


def test_every_service_of_the_platform_is_in_the_chart_with_its_settings() -> None:
    assert chart_gaps(render([DEV_VALUES])) == []


def test_a_service_missing_from_the_chart_is_caught() -> None:
    without_records = render([DEV_VALUES], {"services.records.enabled": "false"})
    # ... and sync and gateway, which call records, are left without its address.
    assert chart_gaps(without_records) == [
        "records: no Deployment",
        "sync: SYNC_RECORDS_TARGET not set",
        "gateway: GATEWAY_RECORDS_TARGET not set",
    ]


def test_ports_are_the_documented_defaults() -> None:
    documented = Ports()
    services = of_kind(render([DEV_VALUES]), "Service")
    for service in START_ORDER:
        ports = {port["name"]: port["port"] for port in services[service]["spec"]["ports"]}
        assert ports.get("grpc", ports.get("http")) == getattr(documented, service)
        if service in GRPC_SERVICES or service == "gateway":
            assert ports["metrics"] == getattr(documented, f"{service}_metrics")


def test_network_policies_allow_exactly_the_architecture_call_graph() -> None:
    manifests = render([DEV_VALUES])
    policies = of_kind(manifests, "NetworkPolicy")
    allowed_in: dict[str, set[str]] = {}
    for callee, policy in policies.items():
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
        callers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in peers}
        allowed_in[callee] = {caller.replace("-", "_") for caller in callers} - {"helm_test"}
    expected_in = {
        callee: {caller for caller, callees in CALL_GRAPH.items() if callee in callees}
        for callee in CALL_GRAPH
    }
    expected_in["mongodb"] = {"identity", "records", "audit", "sync"}
    assert allowed_in == expected_in

    for caller, callees in CALL_GRAPH.items():
        egress_peers = [
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"].replace("-", "_")
            for rule in policies[caller]["spec"]["egress"]
            for peer in rule.get("to", [])
            if "podSelector" in peer
        ]
        uses_db = caller in GRPC_SERVICES
        assert set(egress_peers) == callees | ({"mongodb"} if uses_db else set()), caller


def test_pods_are_locked_down_and_probed() -> None:
    for values in CI_VALUES:
        for service, deployment in of_kind(render([values]), "Deployment").items():
            pod = deployment["spec"]["template"]["spec"]
            container = pod["containers"][0]
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                kind = "grpc" if service in GRPC_SERVICES else "httpGet"
                assert kind in container[probe], (values.name, service, probe)
            assert pod["topologySpreadConstraints"]


def test_production_values_use_the_secret_and_the_real_national_system() -> None:
    manifests = render([PRODUCTION_VALUES])
    deployments = of_kind(manifests, "Deployment")
    assert "national_emulator" not in deployments
    assert not [m for m in manifests if m["kind"] in ("Secret", "StatefulSet")]
    for service in GRPC_SERVICES:
        env = {v["name"]: v for v in deployments[service]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {
            "name": "emr-mongodb",
            "key": "connection-uri",
        }
        if service != "audit":  # the services that store identifiers take their keys from the Secret
            assert env["FIELD_ENCRYPTION_KEYS"]["valueFrom"]["secretKeyRef"] == {
                "name": "emr-field-encryption",
                "key": "keys",
            }
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability.svc:4317"
        assert deployments[service]["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
            "registry.example.org/emr/emr-"
        )
    audit_pod = deployments["audit"]["spec"]["template"]["spec"]
    assert next(v for v in audit_pod["volumes"] if v["name"] == "signing-key")["secret"] == {
        "secretName": "emr-audit-signing-key",
        "defaultMode": 0o440,
        "items": [{"key": "ed25519.pem", "path": "signing-key.pem"}],
    }
    sync_env = {
        v["name"]: v.get("value")
        for v in deployments["sync"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert sync_env["SYNC_NATIONAL_URL"] == "https://national-health-data.example.gov.vn"
    assert set(of_kind(manifests, "HorizontalPodAutoscaler")) == {"identity", "records", "gateway"}


EMULATOR_REFUSED = r"profile production: services\.national_emulator must stay disabled"
BARE_RELEASE = {
    "mongodb.uri": "mongodb://db:27017/",
    "auth.devKeys": "true",
    "national.facilitySigning.existingSecret": "emr-facility-signing",
    "national.credentials.existingSecret": "emr-national-credentials",
}


@pytest.mark.parametrize(
    ("values", "settings"),
    [
        ([PRODUCTION_VALUES], {"services.national_emulator.enabled": "true"}),
        # The dev values turn it on: with a production profile the chart still refuses it.
        ([DEV_VALUES], {"profile": "production"}),
        # A release that names no profile is production.
        ([], {**BARE_RELEASE, "services.national_emulator.enabled": "true"}),
    ],
    ids=["production-values", "dev-values-production-profile", "no-profile"],
)
def test_a_production_profile_refuses_to_render_the_national_emulator(
    values: list[Path], settings: dict[str, str]
) -> None:
    # `helm template` (and so install and upgrade) fails; `helm lint` only logs a template's fail.
    with pytest.raises(ToolError, match=EMULATOR_REFUSED):
        render(values, settings)


def test_the_emulator_runs_only_where_a_development_profile_asks_for_it() -> None:
    assert "national_emulator" not in of_kind(render([PRODUCTION_VALUES]), "Deployment")
    assert "national_emulator" not in of_kind(render(settings=BARE_RELEASE), "Deployment")
    for values in (DEV_VALUES, CHART / "ci" / "podman-values.yaml"):
        assert "national_emulator" in of_kind(render([values]), "Deployment"), values.name
    with pytest.raises(ToolError, match=r"profile.*must be one of"):
        render([DEV_VALUES], {"profile": "staging"})


def test_observability_hooks() -> None:
    manifests = render([PRODUCTION_VALUES])
    monitors = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    assert monitors[0]["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitors[0]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = [m for m in manifests if m["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    assert all(group["rules"] for group in rules[0]["spec"]["groups"])
    dashboards = [
        m for m in manifests if m["kind"] == "ConfigMap" and "grafana_dashboard" in m["metadata"]["labels"]
    ]
    assert len(dashboards) == len(list((CHART / "dashboards").glob("*.json"))) >= 1
    pods = of_kind(manifests, "Deployment")
    annotations = pods["identity"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9451",
        "prometheus.io/path": "/metrics",
    }


def test_bundled_database_is_wired_through_the_secret() -> None:
    manifests = render([DEV_VALUES])
    secret = next(
        m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("mongodb-uri")
    )
    database = next(m for m in manifests if m["kind"] == "StatefulSet")
    assert secret["stringData"]["uri"] == "mongodb://emr-emr-platform-mongodb:27017/"
    env = {v["name"]: v["value"] for v in database["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FERRETDB_TELEMETRY"] == "false"
    assert env["DO_NOT_TRACK"] == "1"


def test_helm_test_hook_checks_every_service() -> None:
    hook = next(m for m in render([DEV_VALUES]) if m["kind"] == "Pod")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = hook["spec"]["containers"][0]["args"]
    checked = {arg.split("=")[0]: arg.split("=")[1] for arg in args if "=" in arg}
    # gRPC services through their plaintext health port: the API port requires a client certificate.
    assert checked == {
        service: f"emr-emr-platform-{service.replace('_', '-')}:"
        f"{getattr(Ports(), f'{service}_health' if service in GRPC_SERVICES else service)}"
        for service in START_ORDER
    }


def audit_signing(manifests: list[Manifest]) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """The audit container's signing-key variables, its key mount and the volume behind it."""
    pod = of_kind(manifests, "Deployment")["audit"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {v["name"]: v["value"] for v in container["env"] if v["name"].startswith("AUDIT_SIGNING_KEY")}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
    volume = next(v for v in pod["volumes"] if v["name"] == "signing-key")
    return env, mount, volume


def test_audit_signs_with_a_key_the_chart_generates_once_and_keeps(tmp_path: Path) -> None:
    manifests = render([DEV_VALUES])
    secret = next(
        m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("signing-key")
    )
    # Kept on uninstall; on upgrade the template reuses it (lookup), so old checkpoints stay verifiable.
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(base64.b64decode(secret["data"]["signing-key.pem"]))
    load_signer(str(key_file), generate_if_missing=False)  # an Ed25519 PKCS#8 PEM, as audit reads it
    env, mount, volume = audit_signing(manifests)
    assert env == {
        "AUDIT_SIGNING_KEY_FILE": f"{mount['mountPath']}/signing-key.pem",
        "AUDIT_SIGNING_KEY_GENERATE": "false",
    }
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_podman_audit_pods_generate_their_key_in_a_writable_volume() -> None:
    manifests = render([CHART / "ci" / "podman-values.yaml"])
    assert not [
        m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("signing-key")
    ]
    env, mount, volume = audit_signing(manifests)
    assert env["AUDIT_SIGNING_KEY_GENERATE"] == "true"
    assert env["AUDIT_SIGNING_KEY_FILE"].startswith(mount["mountPath"] + "/")
    assert mount["readOnly"] is False
    assert "emptyDir" in volume


MTLS_COMPONENTS = {*GRPC_SERVICES, "gateway"}


def tls_of(deployment: Manifest) -> tuple[dict[str, str], dict[str, Any] | None]:
    """A Deployment's TLS_* variables and the volume mounted at /etc/emr-tls (None: none)."""
    pod = deployment["spec"]["template"]["spec"]
    env = {v["name"]: v["value"] for v in pod["containers"][0]["env"] if v["name"].startswith("TLS_")}
    return env, next((v for v in pod["volumes"] if v["name"] == "tls"), None)


def test_mtls_certificates_from_cert_manager_secrets_or_the_chart() -> None:
    files = {
        "TLS_CA_FILE": "/etc/emr-tls/ca.crt",
        "TLS_CERT_FILE": "/etc/emr-tls/tls.crt",
        "TLS_KEY_FILE": "/etc/emr-tls/tls.key",
    }
    production = render([PRODUCTION_VALUES])
    certificates = of_kind(production, "Certificate")
    assert set(certificates) == MTLS_COMPONENTS - {"national_emulator"}
    for name, certificate in certificates.items():
        spec = certificate["spec"]
        assert spec["issuerRef"] == {
            "name": "emr-platform-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert f"emr-emr-platform-{name}.default.svc.cluster.local" in spec["dnsNames"]
    for name, deployment in of_kind(production, "Deployment").items():
        env, volume = tls_of(deployment)
        if name in MTLS_COMPONENTS:
            assert env == files, name
            assert volume is not None and volume["secret"]["secretName"] == f"emr-emr-platform-{name}-tls"
        else:
            assert (env, volume) == ({}, None), name

    # Default: Secrets made outside the chart (by name); nothing issued here.
    default = render(settings={**BARE_RELEASE, "tls.secretNames.records": "hospital-pki-records"})
    assert not [m for m in default if m["kind"] == "Certificate" or m.get("type") == "kubernetes.io/tls"]
    records_volume = tls_of(of_kind(default, "Deployment")["records"])[1]
    assert records_volume is not None and records_volume["secret"]["secretName"] == "hospital-pki-records"

    # Dev clusters: the chart makes one CA and a certificate per component.
    secrets = [m for m in render([DEV_VALUES]) if m["kind"] == "Secret" and m["type"] == "kubernetes.io/tls"]
    assert len(secrets) == len(MTLS_COMPONENTS)
    assert len({s["data"]["ca.crt"] for s in secrets}) == 1

    with pytest.raises(ToolError, match=r"issuerRef\.name"):
        render(settings={**BARE_RELEASE, "tls.source": "certManager"})


def test_probes_use_the_plaintext_health_port() -> None:
    documented = Ports()
    for service, deployment in of_kind(render([DEV_VALUES]), "Deployment").items():
        if service not in GRPC_SERVICES:
            continue
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        health = getattr(documented, f"{service}_health")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": health}, (service, probe)
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env[f"{service.upper()}_HEALTH_PORT"] == str(health)


def test_production_tokens_are_verified_with_the_identity_providers_jwks_and_the_services_keys() -> None:
    manifests = render([PRODUCTION_VALUES])
    deployments = of_kind(manifests, "Deployment")
    (jwks,) = [
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("auth-jwks")
    ]
    # One key per signing service, bound to it and to the roles it asserts, and nothing more.
    entries = json.loads(jwks["data"]["jwks.json"])["keys"]
    bindings = {e["emr_service"]: set(e["emr_roles"]) for e in entries}
    assert bindings == {service: set(roles) for service, roles in SERVICE_ASSERTED_ROLES.items()}
    assert len({e["kid"] for e in entries}) == len(entries)
    assert all(service_binding(entry) for entry in entries)  # what the services accept
    for service in GRPC_SERVICES:
        pod = deployments[service]["spec"]["template"]["spec"]
        env = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
        assert env["AUTH_JWKS_URL"].startswith("https://idp.")
        assert env["AUTH_DEV_KEYS"] == "false" and env["AUTH_ENABLED"] == "true"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert env["AUTH_JWKS_FILE"].startswith(mounts["auth-jwks"] + "/")
        assert volumes["auth-jwks"]["configMap"]["name"] == jwks["metadata"]["name"]
        if service in SERVICE_ASSERTED_ROLES:  # its own key, in its own pods alone
            assert env["AUTH_SERVICE_KEY_FILE"].startswith(mounts["auth-service-key"] + "/")
            assert volumes["auth-service-key"]["secret"]["secretName"] == f"emr-{service}-service-key"
        else:  # audit calls no service: no key at all
            assert env["AUTH_SERVICE_KEY_FILE"] == ""
            assert "auth-service-key" not in volumes
    gateway_env = {
        v["name"] for v in deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert not {name for name in gateway_env if name.startswith("AUTH_")}  # it forwards callers' tokens


def test_a_release_without_token_keys_fails_with_the_way_out() -> None:
    with pytest.raises(ToolError, match=r"auth\.jwksUrl"):
        render([DEV_VALUES], {"auth.devKeys": "false"})


def test_a_calling_service_without_its_own_key_fails_with_the_way_out(tmp_path: Path) -> None:
    values = yaml.safe_load(PRODUCTION_VALUES.read_text())
    del values["auth"]["serviceKeys"]["existingSecrets"]["records"]
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(ToolError, match=r"services\.records calls other services.*existingSecrets\.records"):
        render([tmp_path / "values.yaml"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"auth.serviceKey.existingSecret": "emr-service-signing-key"},  # one shared key: gone
        {"auth.serviceKeys.existingSecrets.gateway": "emr-gateway-service-key"},  # signs nothing
    ],
)
def test_a_shared_or_unknown_service_key_is_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(ToolError):
        render([PRODUCTION_VALUES], overrides)


def test_sync_signs_claims_with_the_facilities_keys_and_sends_with_their_own_clients() -> None:
    deployments = of_kind(render([PRODUCTION_VALUES]), "Deployment")
    pod = deployments["sync"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {v["name"]: v.get("value") for v in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["facility-signing"]["secret"] == {
        "secretName": "emr-facility-signing",
        "defaultMode": 0o440,
    }
    assert mounts["facility-signing"]["readOnly"] is True
    assert env["SYNC_FACILITY_SIGNING_DIR"] == mounts["facility-signing"]["mountPath"]
    assert env["SYNC_FACILITY_SIGNING_GENERATE"] == "false"
    assert volumes["national-credentials"]["secret"]["items"] == [
        {"key": "credentials.json", "path": "credentials.json"}
    ]
    assert (
        env["SYNC_NATIONAL_CREDENTIALS_FILE"]
        == f"{mounts['national-credentials']['mountPath']}/credentials.json"
    )
    # Production: a facility without its own client is not sent with a shared one.
    assert env["SYNC_NATIONAL_SHARED_CLIENT_FALLBACK"] == "false"


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("national.facilitySigning.existingSecret", r"national\.facilitySigning\.existingSecret is needed"),
        ("national.credentials.existingSecret", r"national\.credentials\.existingSecret is needed"),
    ],
)
def test_a_production_release_without_facility_keys_or_clients_fails_with_the_way_out(
    missing: str, named: str
) -> None:
    with pytest.raises(ToolError, match=named):
        render([PRODUCTION_VALUES], {missing: ""})


def test_the_emulator_holds_the_certificates_and_clients_of_the_secrets_given() -> None:
    sync = of_kind(render([DEV_VALUES]), "Deployment")["sync"]["spec"]["template"]["spec"]
    sync_env = {v["name"]: v.get("value") for v in sync["containers"][0]["env"]}
    assert sync_env["SYNC_NATIONAL_SHARED_CLIENT_FALLBACK"] == "true"
    shared = {
        "national.facilitySigning.existingSecret": "emr-facility-signing",
        "national.credentials.existingSecret": "emr-national-credentials",
    }
    emulator = of_kind(render([DEV_VALUES], shared), "Deployment")["national_emulator"]["spec"]["template"][
        "spec"
    ]
    emulator_env = {v["name"]: v.get("value") for v in emulator["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in emulator["containers"][0]["volumeMounts"]}
    assert emulator_env["NATIONAL_EMULATOR_FACILITY_CERTIFICATES_DIR"] == mounts["facility-signing"]
    assert (
        emulator_env["NATIONAL_EMULATOR_FACILITY_CLIENTS_FILE"]
        == f"{mounts['national-credentials']}/credentials.json"
    )


def facility_signing(
    manifests: list[Manifest], service: str
) -> tuple[dict[str, str], dict[str, Any] | None, dict[str, Any] | None]:
    """A service's facility-signing variables, its mount and the volume behind it (None: none)."""
    pod = of_kind(manifests, "Deployment")[service]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {
        v["name"]: v["value"]
        for v in container["env"]
        if v["name"].startswith(("SYNC_FACILITY_SIGNING", "NATIONAL_EMULATOR_FACILITY_CERTIFICATES"))
    }
    mount = next((m for m in container["volumeMounts"] if m["name"] == "facility-signing"), None)
    volume = next((v for v in pod["volumes"] if v["name"] == "facility-signing"), None)
    return env, mount, volume


def test_a_development_cluster_signs_claims_with_keys_the_emulator_knows(tmp_path: Path) -> None:
    manifests = render([DEV_VALUES])
    secret = next(
        m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("facility-signing")
    )
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for name, value in secret["data"].items():
        (tmp_path / name).write_bytes(base64.b64decode(value))
    # Each development facility's pair loads as sync loads it (RSA >= 2048 bits, key matching certificate).
    assert sorted(load_signing_keys(tmp_path)) == ["79001", "79002"]
    sync_env, sync_mount, sync_volume = facility_signing(manifests, "sync")
    emulator_env, emulator_mount, emulator_volume = facility_signing(manifests, "national_emulator")
    assert sync_mount is not None and emulator_mount is not None
    assert sync_env["SYNC_FACILITY_SIGNING_GENERATE"] == "false"
    assert sync_env["SYNC_FACILITY_SIGNING_DIR"] == sync_mount["mountPath"]
    assert emulator_env["NATIONAL_EMULATOR_FACILITY_CERTIFICATES_DIR"] == emulator_mount["mountPath"]
    assert sync_mount["readOnly"] is True and emulator_mount["readOnly"] is True
    assert sync_volume is not None and emulator_volume is not None
    assert (
        sync_volume["secret"]["secretName"]
        == emulator_volume["secret"]["secretName"]
        == secret["metadata"]["name"]
    )


def test_podman_sync_pods_make_their_facility_keys_in_a_writable_volume() -> None:
    manifests = render([CHART / "ci" / "podman-values.yaml"])
    assert not [
        m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("facility-signing")
    ]
    env, mount, volume = facility_signing(manifests, "sync")
    assert env["SYNC_FACILITY_SIGNING_GENERATE"] == "true"
    assert mount is not None and mount["readOnly"] is False
    assert volume is not None and "emptyDir" in volume
    emulator_env, emulator_mount, _ = facility_signing(manifests, "national_emulator")
    assert emulator_env["NATIONAL_EMULATOR_FACILITY_CERTIFICATES_DIR"] == "" and emulator_mount is None
