"""Event payloads, one model per subject.

Inbound events (published by other castle services) ignore unknown fields; events castle-bridge
publishes are strict, so a typo in our own code fails loudly instead of shipping a wrong payload.
When the runtime consumes one of our own subjects it drops unknown top-level fields first
(see daemon/bus/codec.py), so a newer publisher never breaks an older consumer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts import subjects
from contracts.checks import CheckResult
from contracts.types import IPAddress, NodeName, Role


class InboundEvent(BaseModel):
    """Base of events that come from outside castle-bridge: unknown fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)


class OutboundEvent(BaseModel):
    """Base of events castle-bridge publishes: unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class VmCreated(InboundEvent):
    """A VM was created (or re-created) and will boot Talos."""

    name: NodeName
    ip: IPAddress = Field(description="Management IP of the node on the lab subnet")
    vmid: int | None = Field(default=None, ge=1, le=999_999_999, description="Proxmox VM id")
    role: Role = Field(default="worker", description="Kubernetes role of the node")
    proxmox_node: str | None = Field(default=None, max_length=253, description="Proxmox host running the VM")
    tags: tuple[str, ...] = Field(default=(), max_length=64, description="Proxmox tags of the VM")


class VmDestroyed(InboundEvent):
    """A VM was destroyed; its tailnet device and state must go."""

    name: NodeName
    vmid: int | None = Field(default=None, ge=1, le=999_999_999, description="Proxmox VM id")


class TalosReady(InboundEvent):
    """The node's Talos API answers and the machine is running."""

    name: NodeName
    ip: IPAddress = Field(description="Management IP the Talos API answers on")
    role: Role = Field(default="worker", description="Kubernetes role of the node")
    talos_version: str | None = Field(
        default=None,
        pattern=r"^v?\d+\.\d+(\.\d+)?([-+][0-9A-Za-z.-]+)?$",
        description="Talos version, e.g. v1.13.9",
    )


class BridgePatched(OutboundEvent):
    """The tailscale extension config (and node-IP narrowing) was applied to the node."""

    name: NodeName
    ip: IPAddress = Field(description="Management IP of the node")
    role: Role = Field(default="worker", description="Kubernetes role of the node")
    key_id: str = Field(description="Id of the AuthKey minted for this node (never the key itself)")
    key_expires_at: datetime = Field(description="When the minted AuthKey expires")
    patch_digest: str = Field(description="sha256 of the desired patch with the key left out")
    talos_version: str | None = Field(default=None, description="Talos version the patch was rendered for")
    heal: bool = Field(default=False, description="True when this patch healed drift")


class BridgeVerified(OutboundEvent):
    """Every verification check passed: the node is a reachable tailnet member and Vault answers."""

    name: NodeName
    device_id: str = Field(description="Tailscale device nodeId")
    tailnet_ips: tuple[str, ...] = Field(description="Tailnet addresses of the device")
    magicdns_name: str = Field(description="MagicDNS FQDN of the device")
    checks: tuple[CheckResult, ...] = Field(description="Every check with its outcome")


Stage = Literal["talos", "patch", "verify", "heal", "audit", "forget"]


class BridgeFailed(OutboundEvent):
    """A stage of the bridge gave up on a node."""

    name: NodeName
    stage: Stage = Field(description="Which stage failed")
    reason: str = Field(description="Why, naming the failing check or call")
    retryable: bool = Field(description="Whether re-publishing the triggering event may succeed")
    checks: tuple[CheckResult, ...] = Field(default=(), description="Checks as last seen, when verifying")


FindingKind = Literal[
    "device_missing",
    "device_offline",
    "device_untagged",
    "device_renamed",
    "config_missing",
    "config_differs",
    "config_duplicated",
    "service_not_running",
    "node_ip_outside_lab",
    "node_unreachable",
]


class DriftFinding(BaseModel):
    """One difference between what the bridge put on a node and what is there now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FindingKind = Field(description="What kind of drift")
    detail: str = Field(description="What was expected and what was found")
    healable: bool = Field(description="Whether re-patching the extension config can repair it")


class BridgeDrift(OutboundEvent):
    """The audit found that a verified node no longer matches its bridge."""

    name: NodeName
    ip: IPAddress = Field(description="Management IP of the node")
    role: Role = Field(default="worker", description="Kubernetes role of the node")
    findings: tuple[DriftFinding, ...] = Field(min_length=1, description="What differs")


class VaultReachability(OutboundEvent):
    """One run of the Vault reachability matrix."""

    ok: bool = Field(description="Whether every deciding step passed")
    url: str = Field(description="The Vault URL that was checked")
    checks: tuple[CheckResult, ...] = Field(description="dns, tailnet_ip, tcp, tls, http, contract")
    consecutive_failures: int = Field(default=0, ge=0, description="Failed runs in a row, this one included")


class DeadLetter(OutboundEvent):
    """A message that could not be handled, kept with the reason so nothing is silently lost."""

    subject: str = Field(description="Subject the message arrived on")
    reason: str = Field(description="Why it could not be handled")
    deliveries: int = Field(ge=0, description="How many times it was delivered")
    payload: str = Field(description="The raw body, truncated, non-UTF-8 bytes escaped")
    consumer: str | None = Field(default=None, description="Durable consumer that gave up")
    stream_sequence: int | None = Field(default=None, description="Sequence of the message in the stream")


class SchedulerTick(OutboundEvent):
    """A scheduler period started; published once per period whatever the number of replicas."""

    job: str = Field(description="Scheduler job name")
    period_start: datetime = Field(description="Start of the period this tick stands for")


EVENT_MODELS: dict[str, type[BaseModel]] = {
    subjects.VM_CREATED: VmCreated,
    subjects.VM_DESTROYED: VmDestroyed,
    subjects.TALOS_READY: TalosReady,
    subjects.BRIDGE_PATCHED: BridgePatched,
    subjects.BRIDGE_VERIFIED: BridgeVerified,
    subjects.BRIDGE_FAILED: BridgeFailed,
    subjects.BRIDGE_DRIFT: BridgeDrift,
    subjects.VAULT_REACHABILITY: VaultReachability,
    subjects.BRIDGE_DEADLETTER: DeadLetter,
    subjects.VAULT_CHECK_TICK: SchedulerTick,
    subjects.BRIDGE_AUDIT_TICK: SchedulerTick,
}
"""The payload model of every subject."""

SUBJECT_OF: dict[type[BaseModel], str] = {
    model: subject for subject, model in EVENT_MODELS.items() if model is not SchedulerTick
}
"""Where each model is published (ticks name their subject explicitly)."""
