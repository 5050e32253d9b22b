"""Node state in a JetStream KV bucket, written compare-and-set. Never holds a secret.

Keys are `node.<name>` (one per node) and `vault.status` (the last reachability run). The trace context
of a node's journey is stamped on first write, so a later heal can continue the same trace.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import propagate

from contracts.errors import Conflict
from contracts.state import NodeState, VaultStatus, Versioned

NODE_PREFIX = "node."
VAULT_KEY = "vault.status"


def _current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


class KvStateStore:
    """`contracts.state.StateStore` on a JetStream KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> KvStateStore:
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=5, storage=StorageType.FILE, replicas=replicas)
            )
        return cls(kv)

    def _stamp(self, state: NodeState) -> NodeState:
        updates: dict[str, object] = {"updated_at": datetime.now(UTC)}
        if state.trace_parent is None:
            updates["trace_parent"] = _current_traceparent()
        return state.model_copy(update=updates)

    async def get(self, name: str) -> Versioned | None:
        try:
            entry = await self._kv.get(NODE_PREFIX + name)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return Versioned(state=NodeState.model_validate_json(entry.value), revision=entry.revision or 0)

    async def create(self, state: NodeState) -> int:
        try:
            return await self._kv.create(
                NODE_PREFIX + state.name, self._stamp(state).model_dump_json().encode()
            )
        except KeyWrongLastSequenceError:
            raise Conflict(f"state for {state.name} already exists") from None

    async def update(self, state: NodeState, revision: int) -> int:
        try:
            return await self._kv.update(
                NODE_PREFIX + state.name, self._stamp(state).model_dump_json().encode(), last=revision
            )
        except KeyWrongLastSequenceError:
            raise Conflict(f"state for {state.name} changed since revision {revision}") from None

    async def delete(self, name: str) -> None:
        try:
            await self._kv.delete(NODE_PREFIX + name)
        except KeyNotFoundError:
            pass

    async def list(self) -> list[NodeState]:
        """Every node's current entry, read in one pass of a watcher (no per-key round trips)."""
        watcher = await self._kv.watch(NODE_PREFIX + ">", ignore_deletes=True)
        states: list[NodeState] = []
        try:
            async for entry in watcher:
                if entry is None:  # the watcher's marker: everything current has been delivered
                    break
                if entry.value:
                    states.append(NodeState.model_validate_json(entry.value))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return sorted(states, key=lambda s: s.name)

    async def get_vault_status(self) -> VaultStatus | None:
        try:
            entry = await self._kv.get(VAULT_KEY)
        except KeyNotFoundError:
            return None
        return VaultStatus.model_validate_json(entry.value) if entry.value else None

    async def put_vault_status(self, status: VaultStatus) -> None:
        await self._kv.put(VAULT_KEY, status.model_dump_json().encode())
