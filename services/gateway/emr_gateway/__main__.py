"""python -m emr_gateway: runs the FHIR R4 REST gateway."""

import uvicorn

from emr_gateway.app import create_app
from emr_gateway.settings import GatewaySettings
from emr_runtime.logs import configure_logging
from emr_runtime.metrics import start_metrics_server
from emr_runtime.telemetry import configure_tracing

if __name__ == "__main__":
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    configure_tracing("gateway")
    start_metrics_server(settings.host, settings.metrics_port)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
