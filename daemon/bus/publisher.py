"""Publishing events to JetStream with de-duplication ids, CloudEvents headers and trace context."""

from __future__ import annotations

import uuid
from typing import Any

from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from contracts.events import EVENT_MODELS, SUBJECT_OF
from contracts.subjects import EVENT_SOURCE
from daemon.bus.codec import encode
from daemon.telemetry import EVENTS_PUBLISHED, TRACER, record_outcome


def subject_for(event: BaseModel) -> str:
    try:
        return SUBJECT_OF[type(event)]
    except KeyError:
        raise TypeError(f"{type(event).__name__} has no subject; pass one explicitly") from None


class Publisher:
    """Publishes validated events; every message carries Nats-Msg-Id, ce-* and traceparent headers."""

    def __init__(self, js: JetStreamContext, *, source: str = EVENT_SOURCE, timeout: float = 5.0) -> None:
        self._js = js
        self._source = source
        self._timeout = timeout

    async def publish(
        self,
        event: BaseModel,
        *,
        subject: str | None = None,
        msg_id: str | None = None,
        parent: otel_context.Context | None = None,
    ) -> Any:
        subject = subject or subject_for(event)
        expected = EVENT_MODELS.get(subject)
        if expected is not None and not isinstance(event, expected):
            raise TypeError(f"{subject} carries {expected.__name__}, not {type(event).__name__}")
        msg_id = msg_id or str(uuid.uuid4())
        attributes: dict[str, str] = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.message.id": msg_id,
        }
        name = getattr(event, "name", None)
        if isinstance(name, str):
            attributes["castle.node"] = name
        with TRACER.start_as_current_span(
            f"{subject} publish", kind=SpanKind.PRODUCER, context=parent, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            body, headers = encode(event, subject, msg_id=msg_id, source=self._source, extra_headers=carrier)
            ack = await self._js.publish(subject, body, headers=headers, timeout=self._timeout)
            if getattr(ack, "duplicate", False):
                trace.get_current_span().set_attribute("messaging.nats.duplicate", True)
        EVENTS_PUBLISHED.add(1, {"subject": subject})
        if not getattr(ack, "duplicate", False):
            record_outcome(event)
        return ack
