"""gRPC transport of the breach workflow (emr.audit.v1.BreachService)."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2, breach_pb2, breach_pb2_grpc

from emr_audit import converters
from emr_audit.breach_service import BreachWorkflow
from emr_runtime.caller import caller_from_metadata
from emr_runtime.clock import utc_now
from emr_runtime.interceptors import AuditRule

BREACH_SERVICE_NAME = "emr.audit.v1.BreachService"
Context = grpc.aio.ServicerContext[Any, Any]


def _nobody(request: Any, response: Any) -> str:
    return ""


def _requested_incident(request: Any, response: Any) -> str:
    return str(request.incident_id)


def _recorded_incident(request: Any, response: Any) -> str:
    return str(response.incident.incident_id) if response is not None else ""


_RESOURCE = "BreachIncident"
# The officer's own steps go into the log too (by incident id; no patient: a breach's tally counts
# only events that refer to patients, so these never join one).
BREACH_AUDIT_RULES = {
    f"/{BREACH_SERVICE_NAME}/RecordIncident": AuditRule(
        audit_pb2.AUDIT_ACTION_CREATE, _RESOURCE, _nobody, _recorded_incident
    ),
    f"/{BREACH_SERVICE_NAME}/ChangeIncidentStatus": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE, _RESOURCE, _nobody, _requested_incident
    ),
    f"/{BREACH_SERVICE_NAME}/ListAffectedPatients": AuditRule(
        audit_pb2.AUDIT_ACTION_SEARCH, _RESOURCE, _nobody, _requested_incident
    ),
    f"/{BREACH_SERVICE_NAME}/GetBreachNotification": AuditRule(
        audit_pb2.AUDIT_ACTION_READ, _RESOURCE, _nobody, _requested_incident
    ),
}


def _actor(context: Context) -> str:
    return caller_from_metadata(context.invocation_metadata()).actor_id


class BreachServicer(breach_pb2_grpc.BreachServiceServicer):
    def __init__(self, workflow: BreachWorkflow) -> None:
        self._workflow = workflow

    async def RecordIncident(
        self, request: breach_pb2.RecordIncidentRequest, context: Context
    ) -> breach_pb2.RecordIncidentResponse:
        state = await self._workflow.record(
            request.request_id, converters.incident_draft(request), _actor(context)
        )
        return breach_pb2.RecordIncidentResponse(incident=converters.incident_message(state, utc_now()))

    async def GetIncident(
        self, request: breach_pb2.GetIncidentRequest, context: Context
    ) -> breach_pb2.GetIncidentResponse:
        state = await self._workflow.get(request.incident_id)
        return breach_pb2.GetIncidentResponse(incident=converters.incident_message(state, utc_now()))

    async def ListIncidents(
        self, request: breach_pb2.ListIncidentsRequest, context: Context
    ) -> breach_pb2.ListIncidentsResponse:
        states, next_token = await self._workflow.list_incidents(
            converters.breach_status_filter(request), request.page_size, request.page_token
        )
        now = utc_now()
        return breach_pb2.ListIncidentsResponse(
            incidents=[converters.incident_message(state, now) for state in states],
            next_page_token=next_token,
        )

    async def ChangeIncidentStatus(
        self, request: breach_pb2.ChangeIncidentStatusRequest, context: Context
    ) -> breach_pb2.ChangeIncidentStatusResponse:
        state = await self._workflow.change_status(
            request.incident_id, converters.status_request(request), _actor(context)
        )
        return breach_pb2.ChangeIncidentStatusResponse(incident=converters.incident_message(state, utc_now()))

    async def ListAffectedPatients(
        self, request: breach_pb2.ListAffectedPatientsRequest, context: Context
    ) -> breach_pb2.ListAffectedPatientsResponse:
        tally, after, next_token, limit = await self._workflow.affected_patients(
            request.incident_id, request.page_size, request.page_token
        )
        return breach_pb2.ListAffectedPatientsResponse(
            patients=[converters.affected_patient_message(p) for p in tally.patients(after, limit)],
            total_patients=tally.patient_count,
            next_page_token=next_token,
        )

    async def GetBreachNotification(
        self, request: breach_pb2.GetBreachNotificationRequest, context: Context
    ) -> breach_pb2.GetBreachNotificationResponse:
        state, tally, document, text = await self._workflow.notification(
            request.incident_id, request.delay_reason
        )
        return breach_pb2.GetBreachNotificationResponse(
            notification_json=document,
            notification_text=text,
            affected_patients=tally.patient_count,
            affected_records=tally.record_count,
            access_events=tally.access_events,
            incident=converters.incident_message(state, utc_now()),
        )
