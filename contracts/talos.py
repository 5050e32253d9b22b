"""The Talos port: what the bridge reads from and applies to a node, through talosctl."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

EXTENSION_NAME = "tailscale"
EXTENSION_SERVICE = "ext-tailscale"
AUTHKEY_VAR = "TS_AUTHKEY"


class MachineStatus(BaseModel):
    """`talosctl get machinestatus`: the boot stage and readiness."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field(description="booting, installing, maintenance, running, rebooting, ...")
    ready: bool

    @property
    def running(self) -> bool:
        return self.stage == "running"


class ExtensionConfigState(BaseModel):
    """The node's current `tailscale` ExtensionServiceConfig, with the key value redacted on read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: tuple[str, ...] = Field(description="KEY=value entries in node order; TS_AUTHKEY redacted")

    def without_key(self) -> tuple[str, ...]:
        return tuple(e for e in self.environment if not e.startswith(f"{AUTHKEY_VAR}="))


class ServiceState(BaseModel):
    """`talosctl get services ext-tailscale`; absent resource = not running."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    running: bool
    healthy: bool = False
    unknown: bool = True


class BridgePatch(BaseModel):
    """Everything the bridge applies to one node in one `talosctl patch machineconfig`.

    The key is the only secret; it is excluded from every dump and revealed only by the Talos adapter
    when it writes the extension document to talosctl's stdin.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    node: str
    talos_version: str = Field(description="Version the documents were rendered for")
    environment: tuple[str, ...] = Field(description="Extension environment after TS_AUTHKEY, in fixed order")
    auth_key: SecretStr | None = Field(default=None, exclude=True, description="None in a plan")
    delete_existing: bool = Field(description="Remove the node's tailscale document first (it exists)")
    node_ip_documents: tuple[dict[str, Any], ...] = Field(
        default=(), description="Node-IP narrowing patch documents (no secrets); empty = leave as is"
    )
    digest: str = Field(description="sha256 of the desired content, key left out")

    def delete_document(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1alpha1",
            "kind": "ExtensionServiceConfig",
            "name": EXTENSION_NAME,
            "$patch": "delete",
        }

    def extension_document(self, *, reveal: bool) -> dict[str, Any]:
        """The ExtensionServiceConfig; with reveal=False the key reads as <redacted>."""
        if reveal and self.auth_key is None:
            raise ValueError("this patch carries no key (a plan cannot be applied)")
        key = self.auth_key.get_secret_value() if (reveal and self.auth_key) else "<redacted>"
        return {
            "apiVersion": "v1alpha1",
            "kind": "ExtensionServiceConfig",
            "name": EXTENSION_NAME,
            "environment": [f"{AUTHKEY_VAR}={key}", *self.environment],
        }


def patch_digest(environment: tuple[str, ...], node_ip_documents: tuple[dict[str, Any], ...]) -> str:
    """Digest of the desired content with the key left out: stable across re-mints."""
    body = json.dumps({"environment": environment, "node_ip": node_ip_documents}, sort_keys=True)
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


class ApplyResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    changed: bool = Field(description="False when Talos reported no changes")
    message: str = Field(default="", description="talosctl's summary, redacted")


class TalosNodes(Protocol):
    """Talos nodes as reached through talosctl (`-n IP -e IP`)."""

    async def machine_status(self, ip: str) -> MachineStatus:
        """Raises Transient when the Talos API does not answer."""
        ...

    async def version(self, ip: str) -> str:
        """The Talos version tag, e.g. v1.13.9."""
        ...

    async def extension_config(self, ip: str) -> ExtensionConfigState | None:
        """The tailscale ExtensionServiceConfig, or None when the node has none."""
        ...

    async def service(self, ip: str) -> ServiceState:
        """State of ext-tailscale (running=False when Talos has no resource for it)."""
        ...

    async def tailscale_addresses(self, ip: str) -> tuple[str, ...]:
        """Addresses on the tailscale0 link."""
        ...

    async def kubelet_node_ips(self, ip: str) -> tuple[str, ...]:
        """The node IPs the kubelet runs with (the `nodeip` resource); empty before kubelet starts."""
        ...

    async def node_ip_subnets(self, ip: str) -> tuple[str, ...] | None:
        """The configured kubelet nodeIP.validSubnets, or None when unset."""
        ...

    async def apply_patch(self, ip: str, patch: BridgePatch) -> ApplyResult:
        """Apply with --mode=no-reboot; the key travels on stdin. Raises PatchRejected or Transient."""
        ...
