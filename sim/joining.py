"""The seam between simulated Talos nodes and the simulated tailnet: how a node's tailscaled joins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class JoinRefused(Exception):
    """The control plane refused a join (key used, expired, revoked or unknown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JoinedDevice:
    node_id: str
    name: str  # MagicDNS FQDN, possibly hostname-1.<domain>
    addresses: tuple[str, ...]


class TailnetJoiner(Protocol):
    """What a simulated node's tailscaled needs from the control plane."""

    async def join(self, auth_key: str, hostname: str) -> JoinedDevice:
        """Register a device with the key; raises JoinRefused."""
        ...

    def set_connected(self, node_id: str, connected: bool) -> None:
        """The device's tailscaled went up or down."""
        ...

    def device(self, node_id: str) -> dict[str, Any] | None:
        """The device as the API shows it, None when it was deleted."""
        ...
