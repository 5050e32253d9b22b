"""Which handler reacts to which subject: the chain of the design, in one table."""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from pydantic import BaseModel

from contracts import subjects
from contracts.state import StateStore
from daemon.bus.runtime import Handler, ParentLookup, Route
from daemon.config import Settings
from handlers import (
    audit_bridges,
    await_talos,
    check_vault,
    forget_node,
    heal_bridge,
    patch_bridge,
    verify_bridge,
)


def _journey_of(state: StateStore) -> ParentLookup:
    """A drift found by the audit continues its node's journey trace (kept in the node's state)."""

    async def lookup(event: BaseModel) -> otel_context.Context | None:
        name = getattr(event, "name", None)
        current = await state.get(name) if isinstance(name, str) else None
        if current is None or not current.state.trace_parent:
            return None
        return propagate.extract({"traceparent": current.state.trace_parent})

    return lookup


def build_routes(settings: Settings, state: StateStore, prefix: str = "castle-bridge") -> list[Route]:
    n = settings.nats

    def route(
        subject: str, handler: Handler, name: str, concurrency: int = n.concurrency, **kw: Any
    ) -> Route:
        return Route(
            subject,
            handler,
            f"{prefix}-{name}",
            concurrency=concurrency,
            ack_wait=n.ack_wait_seconds,
            max_deliver=n.max_deliver,
            **kw,
        )

    return [
        route(subjects.VM_CREATED, await_talos.handle, "await-talos"),
        route(subjects.TALOS_READY, patch_bridge.handle, "patch-bridge"),
        route(subjects.BRIDGE_PATCHED, verify_bridge.handle, "verify-bridge"),
        route(subjects.VM_DESTROYED, forget_node.handle, "forget-node"),
        route(subjects.BRIDGE_DRIFT, heal_bridge.handle, "heal-bridge"),
        # Ticks: one at a time; the audit itself fans out with its own bounded concurrency.
        route(subjects.VAULT_CHECK_TICK, check_vault.handle, "check-vault", concurrency=1),
        route(
            subjects.BRIDGE_AUDIT_TICK,
            audit_bridges.handle,
            "audit-bridges",
            concurrency=1,
            output_parent=_journey_of(state),
        ),
    ]
