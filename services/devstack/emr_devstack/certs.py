"""Development PKI for mutual TLS: one CA and one certificate per service (and one for tools).

`make certs` (scripts/dev-certs.sh) and the devstack (`make up`, the tests) make them; production
supplies its own (README "Service-to-service TLS"). Each certificate serves as server and client
certificate, with SANs for 127.0.0.1/localhost and the chart's Kubernetes service names.

    python -m emr_devstack.certs --out .run/certs [--release emr-platform] [--namespace emr] [--force]
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emr_devstack.tokens import dev_channel

# Every process that speaks gRPC to another: the four gRPC services, the gateway (a client only),
# and "client" for tools and tests (grpcurl, pytest, benches).
CERTIFICATE_NAMES = ("identity", "records", "audit", "sync", "gateway", "client")
CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """One process's PEM files."""

    ca: Path
    cert: Path
    key: Path

    def env(self) -> dict[str, str]:
        """The variables (emr_runtime.tls.TlsSettings) that point a service at these files."""
        return {"TLS_CA_FILE": str(self.ca), "TLS_CERT_FILE": str(self.cert), "TLS_KEY_FILE": str(self.key)}

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )

    def aio_channel(self, target: str) -> grpc.aio.Channel:
        """A mutual-TLS asyncio channel to a platform service, as this certificate's holder."""
        return grpc.aio.secure_channel(target, self.channel_credentials())


def tls_files(directory: Path, name: str) -> TlsFiles:
    return TlsFiles(directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}-key.pem")


class DevCertificates:
    """For platforms run from a folder (Stack, PodmanPlatform): where their development CA and
    certificates live (made on start when missing), and the certificate tools and tests call with."""

    run_dir: Path

    @property
    def certs_dir(self) -> Path:
        return self.run_dir / "certs"

    @property
    def client_tls(self) -> TlsFiles:
        return tls_files(self.certs_dir, "client")

    def dev_channel(self, target: str, subject: str = "dev-admin") -> grpc.aio.Channel:
        """A mutual-TLS channel as the tools' certificate whose calls act as a development admin
        unless they carry their own token."""
        return dev_channel(target, subject, credentials=self.client_tls.channel_credentials())


def service_dns_names(name: str, release: str, namespace: str) -> list[str]:
    """The names a caller may dial: the chart's Service (``<fullname>-<service>``) and its FQDNs."""
    fullname = release if "emr-platform" in release else f"{release}-emr-platform"
    service = f"{fullname}-{name.replace('_', '-')}"
    return [
        "localhost",
        name,
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_or_make_ca(directory: Path, force: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists() and not force:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EMR platform development CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, dns_names: list[str]
) -> tuple[bytes, bytes]:
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"emr-{name}")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def ensure_dev_certificates(
    directory: Path, release: str = "emr-platform", namespace: str = "emr", force: bool = False
) -> Path:
    """Makes the CA and every certificate of ``CERTIFICATE_NAMES`` that ``directory`` lacks (all of
    them with ``force``); returns ``directory``. Existing files are kept, so a running platform's
    peers keep trusting each other."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_was_there = (directory / "ca.pem").exists() and (directory / "ca-key.pem").exists()
    ca, ca_key = _load_or_make_ca(directory, force)
    for name in CERTIFICATE_NAMES:
        files = tls_files(directory, name)
        if files.cert.exists() and files.key.exists() and ca_was_there and not force:
            continue
        cert_pem, key_pem = _issue(ca, ca_key, name, service_dns_names(name, release, namespace))
        _write_private(files.key, key_pem)
        files.cert.write_bytes(cert_pem)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make a development CA and per-service certificates")
    parser.add_argument("--out", type=Path, default=Path(".run/certs"), help="directory (default .run/certs)")
    parser.add_argument("--release", default="emr-platform", help="Helm release name, for the SANs")
    parser.add_argument("--namespace", default="emr", help="Kubernetes namespace, for the SANs")
    parser.add_argument("--force", action="store_true", help="replace existing files (a new CA)")
    args = parser.parse_args(argv)
    directory = ensure_dev_certificates(args.out, args.release, args.namespace, args.force)
    print(f"development CA and certificates for {', '.join(CERTIFICATE_NAMES)} in {directory}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
