"""Which handler reacts to which subject: the chain of the design, in one table."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import propagate
from pydantic import BaseModel

from contracts import subjects
from contracts.state import StateStore
from daemon.bus.runtime import Route
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


def _journey_of(state: StateStore):  # type: ignore[no-untyped-def]
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
    common = {"ack_wait": n.ack_wait_seconds, "max_deliver": n.max_deliver}
    return [
        Route(
            subjects.VM_CREATED,
            await_talos.handle,
            f"{prefix}-await-talos",
            concurrency=n.concurrency,
            **common,
        ),
        Route(
            subjects.TALOS_READY,
            patch_bridge.handle,
            f"{prefix}-patch-bridge",
            concurrency=n.concurrency,
            **common,
        ),
        Route(
            subjects.BRIDGE_PATCHED,
            verify_bridge.handle,
            f"{prefix}-verify-bridge",
            concurrency=n.concurrency,
            **common,
        ),
        Route(
            subjects.VM_DESTROYED,
            forget_node.handle,
            f"{prefix}-forget-node",
            concurrency=n.concurrency,
            **common,
        ),
        Route(
            subjects.BRIDGE_DRIFT,
            heal_bridge.handle,
            f"{prefix}-heal-bridge",
            concurrency=n.concurrency,
            **common,
        ),
        Route(
            subjects.VAULT_CHECK_TICK, check_vault.handle, f"{prefix}-check-vault", concurrency=1, **common
        ),
        Route(
            subjects.BRIDGE_AUDIT_TICK,
            audit_bridges.handle,
            f"{prefix}-audit-bridges",
            concurrency=1,
            output_parent=_journey_of(state),
            **common,
        ),
    ]
