"""Per-node state as kept in the KV bucket, and the store port. Nothing here is ever a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from contracts.checks import CheckResult
from contracts.types import Role

Phase = Literal[
    "waiting_talos",  # vm.created seen, Talos API not up yet
    "talos_ready",  # Talos answers; not patched yet
    "patching",  # a replica holds the claim and is minting / applying
    "patched",  # applied; verification running
    "verified",  # every check passed
    "healing",  # drift found; re-patch under way
    "failed",  # a stage gave up (last_error says why)
]


class NodeState(BaseModel):
    """One node's bridge record. Written compare-and-set; the AuthKey is never part of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    ip: str
    role: Role = "worker"
    vmid: int | None = None
    phase: Phase
    talos_version: str | None = None
    patch_digest: str | None = None
    key_id: str | None = Field(default=None, description="Last key minted for the node (id only)")
    key_expires_at: datetime | None = None
    device_id: str | None = None
    tailnet_ips: tuple[str, ...] = ()
    magicdns_name: str | None = None
    last_verified: datetime | None = None
    last_error: str | None = None
    last_checks: tuple[CheckResult, ...] = ()
    heal_history: tuple[datetime, ...] = Field(default=(), description="When heals started, newest last")
    suspected: tuple[str, ...] = Field(default=(), description="Transient findings awaiting a second look")
    claim_owner: str | None = Field(default=None, description="Replica holding the patch claim")
    claim_until: datetime | None = Field(default=None, description="When the claim lapses")
    keys_minted: int = Field(default=0, ge=0, description="Keys minted for this node so far")
    trace_parent: str | None = Field(default=None, description="W3C traceparent of the node's journey")
    updated_at: datetime | None = None


class Versioned(BaseModel):
    """A state entry with the KV revision needed for compare-and-set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: NodeState
    revision: int


class VaultStatus(BaseModel):
    """The last Vault reachability run, for `status` and `/readyz`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    url: str
    checked_at: datetime
    consecutive_failures: int = 0
    failing_step: str | None = None
    checks: tuple[CheckResult, ...] = ()


class StateStore(Protocol):
    """Node state with compare-and-set writes (a JetStream KV bucket in production)."""

    async def get(self, name: str) -> Versioned | None: ...

    async def create(self, state: NodeState) -> int:
        """Write a new entry; raises Conflict when one exists."""
        ...

    async def update(self, state: NodeState, revision: int) -> int:
        """Replace the entry at `revision`; raises Conflict when it moved on."""
        ...

    async def delete(self, name: str) -> None:
        """Drop the entry; a missing one counts as deleted."""
        ...

    async def list(self) -> list[NodeState]: ...

    async def get_vault_status(self) -> VaultStatus | None: ...

    async def put_vault_status(self, status: VaultStatus) -> None: ...
