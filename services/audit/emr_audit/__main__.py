"""python -m emr_audit: runs the audit gRPC service."""

from emr_runtime.server import run

from emr_audit.app import build
from emr_audit.settings import AuditSettings

if __name__ == "__main__":
    run("audit", AuditSettings(), build)
