"""The tailnet port: the few Tailscale API v2 calls the bridge makes, and the models they return."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class AuthKey(BaseModel):
    """A freshly minted AuthKey. `secret` exists only in memory and never prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(description="Key id, e.g. k123456CNTRL")
    secret: SecretStr = Field(description="The key itself; reveal only to hand it to Talos", exclude=True)
    created: datetime
    expires: datetime
    tags: tuple[str, ...] = ()
    description: str = ""


class KeyInfo(BaseModel):
    """What the API tells about an existing key (never the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    created: datetime | None = None
    expires: datetime | None = None
    revoked: datetime | None = None
    invalid: bool = False
    description: str = ""
    tags: tuple[str, ...] = ()
    reusable: bool = False
    ephemeral: bool = False
    preauthorized: bool = False


class Device(BaseModel):
    """A tailnet device, with the fields the bridge looks at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Legacy numeric id")
    node_id: str = Field(description="Preferred id, e.g. n292kg92CNTRL")
    name: str = Field(description="MagicDNS FQDN, e.g. tazlab-k8s-worker-1.magellanic-gondola.ts.net")
    hostname: str = Field(description="Machine name as the device reported it")
    addresses: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    authorized: bool = False
    last_seen: datetime | None = None
    connected_to_control: bool | None = Field(
        default=None, description="Whether the device holds a control connection now (newer API field)"
    )
    os: str = ""
    client_version: str = ""

    @property
    def magicdns_label(self) -> str:
        """First label of the MagicDNS name: the hostname, or hostname-1 after a collision."""
        return self.name.split(".", 1)[0]

    @property
    def ipv4(self) -> str | None:
        return next((a for a in self.addresses if ":" not in a), None)


class TailnetAPI(Protocol):
    """The Tailscale control API, narrowed to what the bridge uses."""

    async def create_auth_key(self, node: str) -> AuthKey:
        """Mint one single-use, pre-authorized, tagged key for `node`."""
        ...

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key; a key that is already gone counts as revoked."""
        ...

    async def get_key(self, key_id: str) -> KeyInfo:
        """Describe a key; raises NotFound when it does not exist."""
        ...

    async def list_devices(self) -> list[Device]:
        """Every device of the tailnet."""
        ...

    async def find_devices(self, hostname: str) -> list[Device]:
        """Devices whose hostname (or MagicDNS first label, `-N` suffix ignored) is `hostname`."""
        ...

    async def delete_device(self, device_id: str) -> None:
        """Delete a device; one that is already gone counts as deleted."""
        ...
