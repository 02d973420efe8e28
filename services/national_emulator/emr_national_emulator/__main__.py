"""python -m emr_national_emulator: runs the national system emulator over HTTP."""

import uvicorn

from emr_national_emulator.app import create_app
from emr_national_emulator.settings import EmulatorSettings

if __name__ == "__main__":
    settings = EmulatorSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
