"""python -m emr_identity: runs the identity gRPC service."""

from emr_identity.app import build
from emr_identity.settings import IdentitySettings
from emr_runtime.server import run

if __name__ == "__main__":
    run("identity", IdentitySettings(), build)
