"""POST /v1/hooks/proxmox: the Proxmox side (a hookscript, the rebirth script) announces VMs.

Nothing is accepted that is not stored: the answer is 202 only after JetStream acknowledged the event,
and 503 (retry) while NATS is unavailable. A retried or replayed hook is harmless: the event's
de-duplication id comes from the `Idempotency-Key` header, else from the body and the minute, so
JetStream stores it once and the answer says `duplicate`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from contracts import subjects
from contracts.events import VmCreated, VmDestroyed
from daemon.bus.codec import describe_validation

if TYPE_CHECKING:
    from daemon.app import Daemon

EVENTS: dict[str, tuple[str, type[BaseModel]]] = {
    "created": (subjects.VM_CREATED, VmCreated),
    "destroyed": (subjects.VM_DESTROYED, VmDestroyed),
}
DERIVED_ID_BUCKET_SECONDS = 60
now = time.time  # replaceable in tests

# Hookscript phases that mean the VM (re)appeared with a fresh Talos to bridge.
PHASES = {"post-start": "created", "pre-destroy": "destroyed", "post-destroy": "destroyed"}


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def _authorized(request: web.Request, daemon: Daemon) -> web.Response | None:
    token = daemon.settings.http.webhook_token
    if token is None:
        return _error(
            403, "webhooks are disabled: set CASTLE_BRIDGE_HTTP__WEBHOOK_TOKEN (or _FILE) on the daemon"
        )
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return _error(
            401, "missing bearer token (Authorization: Bearer <token>)", **{"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(presented.strip().encode(), token.get_secret_value().encode()):
        return _error(401, "wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    return None


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    # Read to the end: one read() returns only what has arrived so far, which cut larger (or chunked)
    # bodies short and answered a valid hook with "not valid JSON".
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("body is not valid JSON: nested too deeply") from None


def _event_of(body: Any) -> tuple[str, BaseModel]:
    if not isinstance(body, dict):
        raise ValueError(f"body must be a JSON object, got {type(body).__name__}")
    subject, model = EVENTS[_kind_of(body)]
    try:
        return subject, model.model_validate(body)
    except ValidationError as exc:
        raise ValueError(describe_validation(exc)) from None


def _kind_of(body: dict[str, Any]) -> str:
    """`event` when given, else what the hookscript phase means; a phase we do not act on is refused
    (a `post-stop` must not announce a VM as created)."""
    kind = body.get("event")
    if kind is not None:
        if not isinstance(kind, str) or kind not in EVENTS:
            raise ValueError(f"event must be one of {sorted(EVENTS)}, got {str(kind)[:40]!r}")
        return kind
    phase = body.get("phase")
    if phase is None:
        return "created"
    if not isinstance(phase, str) or phase not in PHASES:
        acted_on = ", ".join(f"{p} -> {k}" for p, k in PHASES.items())
        raise ValueError(f"phase {str(phase)[:40]!r} is not one castle-bridge acts on ({acted_on})")
    return PHASES[phase]


def _dedupe_id(request: web.Request, subject: str, event: BaseModel) -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if key:
        if len(key) > 200 or not key.isprintable():
            raise ValueError("Idempotency-Key must be at most 200 printable characters")
        return f"hook:{subject}:{key}"
    # Without a key, the body stands in for one, within a one-minute bucket: a retry (seconds later) is
    # recognised, while the same VM re-created minutes later in a rebirth is a new announcement and not
    # dropped as a duplicate. (A retry that straddles a bucket edge publishes twice: the chain is
    # idempotent, so that costs a re-check, never a second key.)
    digest = hashlib.sha256(event.model_dump_json().encode()).hexdigest()[:32]
    return f"hook:{subject}:{digest}:{int(now() // DERIVED_ID_BUCKET_SECONDS)}"


async def handle_proxmox_hook(request: web.Request) -> web.Response:
    from daemon.http_api import DAEMON

    daemon = request.app[DAEMON]
    if (refusal := _authorized(request, daemon)) is not None:
        return refusal
    if request.content_type != "application/json":
        return _error(415, f"Content-Type must be application/json, got {request.content_type or 'none'!r}")
    limit = daemon.settings.http.max_body_bytes
    try:
        subject, event = _event_of(await _read_json(request, limit))
        msg_id = _dedupe_id(request, subject, event)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body is larger than {limit} bytes")
    except ValueError as exc:
        return _error(400, str(exc))
    if daemon.publisher is None or not (daemon.nc and daemon.nc.is_connected):
        return _error(503, "NATS is unavailable; nothing was accepted, retry later", **{"Retry-After": "5"})
    try:
        ack = await daemon.publisher.publish(event, subject=subject, msg_id=msg_id)
    except Exception as exc:
        return _error(503, f"event not stored ({type(exc).__name__}); retry later", **{"Retry-After": "5"})
    duplicate = bool(getattr(ack, "duplicate", False))
    body = {"subject": subject, "msg_id": msg_id, "duplicate": duplicate, "stream_sequence": ack.seq}
    return web.json_response(body, status=200 if duplicate else 202)
