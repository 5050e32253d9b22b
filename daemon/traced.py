"""A span (and a call metric) around every call an adapter makes to an external system.

The proxy wraps any adapter behind a port Protocol, so the adapters stay free of telemetry plumbing and
no call can be missed. Attributes are names and ids picked by parameter name, never argument values in
general: a BridgePatch (which holds the key) is never turned into an attribute.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from contracts.redact import redact
from daemon.telemetry import EXTERNAL_CALLS, EXTERNAL_SECONDS, KEYS_MINTED, KEYS_REVOKED, TRACER

_ATTRIBUTE_OF = {
    "node": "castle.node",
    "hostname": "castle.node",
    "ip": "castle.node_ip",
    "address": "net.peer.name",
    "port": "net.peer.port",
    "key_id": "castle.key_id",
    "device_id": "castle.device_id",
}


def _attributes(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return {}
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name in _ATTRIBUTE_OF and isinstance(value, str | int):
            out[_ATTRIBUTE_OF[name]] = value
    return out


def _result_attributes(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, attribute in (("key_id", "castle.key_id"), ("node_id", "castle.device_id")):
        value = getattr(result, field, None)
        if isinstance(value, str):
            out[attribute] = value
    return out


class Traced:
    """`Traced(adapter, "tailscale")` behaves like `adapter`, with a CLIENT span per coroutine call."""

    def __init__(self, target: Any, system: str) -> None:
        self._target = target
        self._system = system

    def __repr__(self) -> str:
        return f"Traced({self._target!r})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._call(name, attr, args, kwargs)

        return call

    async def _call(
        self, name: str, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        attributes = {"castle.system": self._system, **_attributes(fn, args, kwargs)}
        started = time.monotonic()
        outcome = "ok"
        with TRACER.start_as_current_span(
            f"{self._system} {name}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as span:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                outcome = type(exc).__name__
                span.set_status(Status(StatusCode.ERROR, redact(str(exc))[:300]))
                span.set_attribute("castle.error", outcome)
                raise
            finally:
                labels = {"system": self._system, "operation": name, "outcome": outcome}
                EXTERNAL_CALLS.add(1, labels)
                EXTERNAL_SECONDS.record(time.monotonic() - started, labels)
            for key, value in _result_attributes(result).items():
                span.set_attribute(key, value)
            ok = getattr(result, "ok", None)
            if isinstance(ok, bool):
                span.set_attribute("castle.check_ok", ok)
        if name == "create_auth_key":
            KEYS_MINTED.add(1)
        elif name == "revoke_key":
            KEYS_REVOKED.add(1)
        return result
