"""Sync's domain metrics (names shared with the dashboards and alert rules of the chart). Labels are
bounded: facility codes and a fixed outcome set, never patient ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PENDING_DELIVERIES = Gauge(
    "emr_sync_pending_deliveries", "Deliveries waiting to be sent or retried.", ("facility_code",)
)
OLDEST_PENDING_AGE = Gauge(
    "emr_sync_oldest_pending_age_seconds",
    "Age of the oldest delivery still waiting; 0 when none waits.",
    ("facility_code",),
)
DEAD_LETTERS = Gauge(
    "emr_sync_dead_letters", "Deliveries refused for good, awaiting a person.", ("facility_code",)
)
DELIVERIES = Counter(
    "emr_sync_deliveries_total",
    "Delivery attempts by outcome (delivered, failed: to be retried, dead_lettered).",
    ("outcome",),
)
