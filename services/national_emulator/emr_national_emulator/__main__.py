"""python -m emr_national_emulator: runs the national system emulator over HTTP."""

import uvicorn

from emr_national_emulator.app import create_app
from emr_national_emulator.settings import EmulatorSettings
from emr_runtime.logs import configure_logging
from emr_runtime.telemetry import configure_tracing

if __name__ == "__main__":
    settings = EmulatorSettings()
    configure_logging("national-emulator", settings.log_level)
    configure_tracing("national-emulator")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
