"""What the emulated national system holds: deliveries keyed by their Idempotency-Key.

In memory, by design: the emulator stands in for a remote system in dev and tests, and a restart
that forgets everything is how a test simulates the national side losing data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Receipt:
    """The national system's acknowledgement of one delivery."""

    transaction_id: str
    received_at: datetime


@dataclass(frozen=True)
class Delivery:
    idempotency_key: str
    resource_type: str
    resource: dict[str, Any]
    receipt: Receipt


@dataclass
class DeliveryStore:
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    duplicates_received: int = 0

    def accept(
        self, idempotency_key: str, resource_type: str, resource: dict[str, Any]
    ) -> tuple[Delivery, bool]:
        """Stores a delivery once; a repeated key returns the first receipt and counts a duplicate."""
        held = self.deliveries.get(idempotency_key)
        if held is not None:
            self.duplicates_received += 1
            return held, False
        delivery = Delivery(
            idempotency_key, resource_type, resource, Receipt(str(uuid.uuid4()), datetime.now(UTC))
        )
        self.deliveries[idempotency_key] = delivery
        return delivery, True

    def held(self, resource_type: str | None = None) -> list[Delivery]:
        return [
            d for d in self.deliveries.values() if resource_type is None or d.resource_type == resource_type
        ]
