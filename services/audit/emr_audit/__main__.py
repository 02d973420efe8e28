"""python -m emr_audit: runs the audit gRPC service."""

from emr_audit.app import build
from emr_audit.settings import AuditSettings
from emr_runtime.server import run

if __name__ == "__main__":
    run("audit", AuditSettings(), build)
