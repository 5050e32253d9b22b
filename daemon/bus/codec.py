"""Wire format: JSON bodies, CloudEvents 1.0 binary-mode headers on publish, tolerant decoding on consume.

A plain JSON body without headers (`nats pub vm.created '{...}'`) is a valid event, and so is a
structured-mode CloudEvent whose `data` is the payload. Unknown top-level fields are dropped before
validating, so an older consumer keeps working when a newer publisher adds fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

MAX_BODY_BYTES = 1024 * 1024
FAST_PATH_MAX_BYTES = 4096
DEADLETTER_PAYLOAD_CHARS = 4096
CE_TYPE_PREFIX = "io.castle."

M = TypeVar("M", bound=BaseModel)


class InvalidPayload(Exception):
    """The message can never become a valid event; the text says why (it never echoes values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _declared_structured(headers: Mapping[str, str]) -> bool:
    # Header names are case-insensitive; castle-bridge itself writes the lower-case form, so look that up
    # first and scan only when it is absent.
    content_type = headers.get("content-type")
    if content_type is None:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return content_type.startswith("application/cloudevents+json")


def _is_structured(obj: object, headers: Mapping[str, str]) -> bool:
    if _declared_structured(headers):
        return True
    return isinstance(obj, dict) and "specversion" in obj and "data" in obj and "type" in obj


def decode(data: bytes, headers: Mapping[str, str] | None, model: type[M]) -> M:
    """Turn a message body into `model`, or raise InvalidPayload with a reason an operator can act on."""
    if len(data) > MAX_BODY_BYTES:
        raise InvalidPayload(f"body is {len(data)} bytes, over the {MAX_BODY_BYTES}-byte limit")
    if (
        len(data) <= FAST_PATH_MAX_BYTES
        and b'"specversion"' not in data
        and not _declared_structured(headers or {})
    ):
        # The common case, an event as castle-bridge publishes it, parsed and validated in one pass by
        # pydantic-core. Only a success is taken: anything it refuses goes the careful way below, which
        # knows why. The size bound keeps out what only the careful way refuses (an integer past Python's
        # 4300-digit limit in an ignored field); a body that names `specversion`, or whose headers say
        # so, may be a structured CloudEvent.
        try:
            return model.model_validate_json(data)
        except ValidationError:
            pass
    if not data.strip():
        raise InvalidPayload("body is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"body is not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidPayload("body is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # valid JSON Python will not read, e.g. an integer of over 4300 digits
        raise InvalidPayload(f"body is not usable JSON: {str(exc).split(':', 1)[0]}") from None
    if _is_structured(obj, headers or {}):
        if not isinstance(obj, dict):
            raise InvalidPayload("structured CloudEvent must be a JSON object")
        obj = obj.get("data")
    if not isinstance(obj, dict):
        raise InvalidPayload(f"payload must be a JSON object, got {type(obj).__name__}")
    known = model.model_fields.keys()
    try:
        return model.model_validate({k: v for k, v in obj.items() if k in known})
    except ValidationError as exc:
        raise InvalidPayload(f"invalid {model.__name__}: {describe_validation(exc)}") from None


def encode(
    event: BaseModel,
    subject: str,
    *,
    msg_id: str,
    source: str,
    extra_headers: Mapping[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an outgoing event (Nats-Msg-Id for JetStream de-duplication)."""
    headers = {
        "Nats-Msg-Id": msg_id,
        "ce-specversion": "1.0",
        "ce-id": msg_id,
        "ce-type": CE_TYPE_PREFIX + subject,
        "ce-source": source,
        "ce-time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "content-type": "application/json",
    }
    name = getattr(event, "name", None)
    if isinstance(name, str):
        headers["ce-subject"] = name
    if extra_headers:
        headers.update(extra_headers)
    return event.model_dump_json().encode(), headers


def truncate_payload(data: bytes) -> str:
    """Raw body for the dead letter: non-UTF-8 bytes escaped, cut to a readable size."""
    text = data[: DEADLETTER_PAYLOAD_CHARS * 4].decode("utf-8", errors="backslashreplace")
    if len(text) > DEADLETTER_PAYLOAD_CHARS:
        return text[:DEADLETTER_PAYLOAD_CHARS] + f"... [{len(data)} bytes]"
    return text
