"""The bridge policy: the validated settings the handlers need, passed down from the daemon's config."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

TAILNET_RANGE = ipaddress.ip_network("100.64.0.0/10")


def lab_networks(subnets: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse lab subnets; refuse none at all, a non-CIDR, and any overlap with the tailnet range.

    Node identity must stay on the lab subnet: a kubelet that picked a 100.x address would move the node
    onto the tailnet. Config, policy and the renderer all use this one check.
    """
    nets = []
    for text in subnets:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text[:64]!r} is not a CIDR subnet") from None
        if net.version == 4 and net.overlaps(TAILNET_RANGE):
            raise ValueError(
                f"{net} overlaps the tailnet range {TAILNET_RANGE}; node identity must stay off it"
            )
        nets.append(net)
    if not nets:
        raise ValueError("at least one lab subnet is required")
    return tuple(nets)


class BridgePolicy(BaseModel):
    """What a bridge should look like and how patient each stage is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tags: tuple[str, ...] = ("tag:tazlab-k8s",)
    lab_subnets: tuple[str, ...] = ("192.168.1.0/24",)
    dns_domain: str = Field(description="MagicDNS domain of the tailnet, e.g. magellanic-gondola.ts.net")
    apid_port: int = 50000
    talos_deadline_seconds: float = 900.0
    talos_poll_seconds: float = 5.0
    verify_deadline_seconds: float = 300.0
    verify_poll_seconds: float = 5.0
    verify_vault: bool = True
    heal_budget: int = Field(default=1, ge=0, description="Heals allowed per node per heal window")
    heal_window_seconds: float = 600.0
    claim_seconds: float = Field(
        default=120.0, description="How long a patch claim holds before others may take it"
    )
    confirm_seconds: float = Field(default=30.0, description="Delay before the audit's second look")
    audit_concurrency: int = Field(default=16, ge=1)

    @field_validator("lab_subnets")
    @classmethod
    def _outside_tailnet(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(net) for net in lab_networks(value))

    def in_lab(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n) for n in self.lab_subnets)

    def magicdns_name(self, node: str) -> str:
        return f"{node}.{self.dns_domain}"


class Clock(Protocol):
    """Time, injectable so tests never wait for real minutes."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...
