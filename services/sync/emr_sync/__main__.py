"""python -m emr_sync: runs the national sync gRPC service and its delivery pipeline."""

from emr_runtime.server import run
from emr_sync.app import build
from emr_sync.settings import SyncSettings

if __name__ == "__main__":
    run("sync", SyncSettings(), build)
