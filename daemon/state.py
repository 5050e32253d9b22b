"""Node state in a JetStream KV bucket, written compare-and-set. Never holds a secret.

Keys are `node.<name>` (one per node) and `vault.status` (the last reachability run). The trace context
of a node's journey is stamped on first write, so a later heal can continue the same trace.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import propagate

from contracts.errors import Conflict
from contracts.state import NodeState, VaultStatus, Versioned

NODE_PREFIX = "node."
VAULT_KEY = "vault.status"
SNAPSHOT_BATCH = 256
SNAPSHOT_FETCH_TIMEOUT_S = 5.0
SNAPSHOT_CONSUMER_IDLE_S = 60.0


def _current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


class KvStateStore:
    """`contracts.state.StateStore` on a JetStream KV bucket."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self._stream = f"KV_{bucket}"  # the stream nats-py's KV layer keeps a bucket in

    @classmethod
    async def attach(cls, js: JetStreamContext, bucket: str) -> KvStateStore:
        """The existing bucket (BucketNotFoundError if the daemon never created it): for readers."""
        return cls(js, await js.key_value(bucket), bucket)

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> KvStateStore:
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=5, storage=StorageType.FILE, replicas=replicas)
            )
        return cls(js, kv, bucket)

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
        """Every node's current entry, read in one pass (no per-key round trips).

        A throwaway pull consumer on the bucket's stream, last message per key, counts down its own
        `num_pending`: the snapshot is complete when a message says nothing is left. nats-py's
        `KeyValue.watch()` is not used: its end-of-snapshot marker races the first deliveries (the server
        may have pushed every entry before the consumer info comes back, so the marker arrives first and
        the snapshot looks empty; an audit sweep once saw no nodes that way).
        """
        info = await self._js.add_consumer(
            self._stream,
            ConsumerConfig(
                name=f"snapshot-{uuid.uuid4().hex}",
                filter_subject=f"$KV.{self._bucket}.{NODE_PREFIX}>",
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                mem_storage=True,
                inactive_threshold=SNAPSHOT_CONSUMER_IDLE_S,
            ),
        )
        states: list[NodeState] = []
        psub = await self._js.pull_subscribe_bind(stream=self._stream, name=info.name)
        try:
            remaining = info.num_pending or 0
            while remaining > 0:
                for msg in await psub.fetch(min(remaining, SNAPSHOT_BATCH), timeout=SNAPSHOT_FETCH_TIMEOUT_S):
                    remaining = msg.metadata.num_pending or 0
                    if msg.data and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                        states.append(NodeState.model_validate_json(msg.data))
        finally:
            await psub.unsubscribe()
            with contextlib.suppress(NatsError):  # the idle threshold removes it anyway
                await self._js.delete_consumer(self._stream, info.name)
        return sorted(states, key=lambda s: s.name)

    async def get_vault_status(self) -> VaultStatus | None:
        try:
            entry = await self._kv.get(VAULT_KEY)
        except KeyNotFoundError:
            return None
        return VaultStatus.model_validate_json(entry.value) if entry.value else None

    async def put_vault_status(self, status: VaultStatus) -> None:
        await self._kv.put(VAULT_KEY, status.model_dump_json().encode())
