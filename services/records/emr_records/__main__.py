"""python -m emr_records: runs the records gRPC service."""

from emr_records.app import build
from emr_records.settings import RecordsSettings
from emr_runtime.server import run

if __name__ == "__main__":
    run("records", RecordsSettings(), build)
