"""The simulated Ephemeral Castle: a tailnet control plane, Talos nodes behind `castle-talosctl-sim`, a TLS
Vault stand-in joined to the tailnet, and a SOCKS5 "userspace tailscaled" that makes tailnet addresses
reachable from the daemon, all on loopback.

Tailnet addresses are real-looking 100.x addresses, reachable only through the SOCKS5 proxy and only
while the device is connected, exactly as from a TazPod whose tailscaled runs in userspace mode. Each
node and the Vault stand-in listen on their own loopback address in a random 127.A.B.0/24 "lab subnet".
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.joining import JoinedDevice
from sim.pki import CertificateAuthority
from sim.socks5 import Socks5Server
from sim.tailnet import TailnetSim
from sim.tailscale_api import serve_tailnet
from sim.talos import SimNode, TalosSim
from sim.talos_api import serve_talos, write_talosconfig
from sim.vault import VaultStandIn

DOMAIN = "magellanic-gondola.ts.net"
NODE_TAGS = ("tag:tazlab-k8s",)
VAULT_TAG = "tag:vault"
VAULT_LABEL = "lushycorp-vault"


def talosctl_sim_path() -> str:
    """The `castle-talosctl-sim` executable installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "castle-talosctl-sim"
    if beside.is_file():
        return str(beside)
    found = shutil.which("castle-talosctl-sim")
    if not found:
        raise RuntimeError("castle-talosctl-sim is not installed; run `pip install -e .`")
    return found


def random_lab_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    rng = rng or random.Random()
    return ipaddress.IPv4Network(f"127.{rng.randint(64, 250)}.{rng.randint(1, 250)}.0/24")


@dataclass
class SimCastle:
    """Start with `async with SimCastle(workdir) as castle:`; add nodes; hand `settings()` to a daemon."""

    workdir: Path
    domain: str = DOMAIN
    tags: tuple[str, ...] = NODE_TAGS
    join_delay: float = 0.05
    apid_port: int = 50000
    lab: ipaddress.IPv4Network = field(default_factory=random_lab_subnet)
    client_id: str = field(default_factory=lambda: "k" + secrets.token_hex(6) + "CNTRL")
    tailnet: TailnetSim = field(init=False)
    talos: TalosSim = field(init=False)
    vault: VaultStandIn = field(init=False)
    proxy: Socks5Server = field(init=False)
    api_url: str = field(init=False, default="")
    talosconfig: Path = field(init=False)
    ca_file: Path = field(init=False)
    vault_device: JoinedDevice | None = field(init=False, default=None)
    client_secret: str = field(
        repr=False, default_factory=lambda: "tskey-client-" + secrets.token_urlsafe(24)
    )
    _stack: contextlib.AsyncExitStack = field(init=False, default_factory=contextlib.AsyncExitStack)
    _next_host: int = field(init=False, default=10)

    async def __aenter__(self) -> SimCastle:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tailnet = TailnetSim(self.domain)
        self.tailnet.add_oauth_client(self.client_id, self.client_secret, self.tags)
        self.api_url = await self._stack.enter_async_context(serve_tailnet(self.tailnet))
        self.talos = TalosSim(self.tailnet, apid_port=self.apid_port, join_delay=self.join_delay)
        await self._stack.enter_async_context(self.talos)
        talos_url = await self._stack.enter_async_context(serve_talos(self.talos))
        self.talosconfig = write_talosconfig(self.workdir / "talosconfig", talos_url)
        ca = CertificateAuthority.create("castle-sim CA")
        self.ca_file = ca.write(self.workdir / "ca").cert
        self.vault = VaultStandIn(ca, f"{VAULT_LABEL}.{self.domain}", host=str(self.lab[250]), port=8200)
        await self._stack.enter_async_context(self.vault)
        self.vault_device = await self.join_infra_device(VAULT_LABEL, (VAULT_TAG,))
        self.proxy = Socks5Server(self._route)
        await self._stack.enter_async_context(self.proxy)

    # -- the simulated network -------------------------------------------------------------------

    def _route(self, host: str, port: int) -> tuple[str, int] | None:
        """Where a tailnet address really is: only connected devices answer, as on a tailnet."""
        if self.vault_device and host in self.vault_device.addresses and port == self.vault.port:
            return (self.vault.host, self.vault.port)
        for node in self.talos.nodes.values():
            device = node.device
            if device is None or host not in device.addresses:
                continue
            info = self.tailnet.device(device.node_id)
            if info is None or not info.get("connectedToControl"):
                return None
            return (node.ip, port)
        return None

    async def join_infra_device(
        self, hostname: str, tags: tuple[str, ...], *, online: bool = True
    ) -> JoinedDevice:
        """Join a device that is not a Talos node (Vault, or a stale device from a previous life)."""
        client_id, secret = "infra-" + secrets.token_hex(4), secrets.token_urlsafe(16)
        self.tailnet.add_oauth_client(client_id, secret, tags)
        token = self.tailnet.issue_token({"client_id": client_id, "client_secret": secret})
        grant = self.tailnet.authenticate(token["access_token"], "auth_keys", write=True)
        body = {"capabilities": {"devices": {"create": {"preauthorized": True, "tags": list(tags)}}}}
        key = self.tailnet.create_key(grant, body)
        device = await self.tailnet.join(key["key"], hostname)
        self.tailnet.set_connected(device.node_id, online)
        return device

    # -- nodes ----------------------------------------------------------------------------------

    def add_node(
        self, name: str, *, role: str = "worker", talos_version: str = "v1.13.9", boot_delay: float = 0.2
    ) -> SimNode:
        ip = str(self.lab[self._next_host])
        self._next_host += 1
        return self.talos.add_node(name, ip, role=role, talos_version=talos_version, boot_delay=boot_delay)

    async def add_stale_device(self, hostname: str) -> JoinedDevice:
        """An offline device left by the node's previous life: it holds `hostname.<domain>`."""
        return await self.join_infra_device(hostname, self.tags, online=False)

    # -- what a daemon needs ---------------------------------------------------------------------

    def settings(self) -> dict[str, dict[str, Any]]:
        """Setting sections for `daemon.config.load_settings(None, **castle.settings())`.

        The OAuth secret is handed over in memory, never through a file or argv.
        """
        return {
            "tailscale": {
                "api_url": self.api_url,
                "oauth_client_id": self.client_id,
                "oauth_client_secret": self.client_secret,
                "tags": list(self.tags),
                "dns_domain": self.domain,
            },
            "talos": {
                "talosctl": talosctl_sim_path(),
                "talosconfig": str(self.talosconfig),
                "lab_subnets": [str(self.lab)],
            },
            "vault": {"url": self.vault.url, "ca_file": str(self.ca_file)},
            "mesh": {"socks5_proxy": self.proxy.url, "apid_port": self.apid_port},
        }

    def secrets(self) -> list[str]:
        """Every secret in play (keys minted, access tokens, the OAuth secret): what leak scans look for."""
        return [*self.tailnet.key_secrets(), *self.tailnet.token_values(), self.client_secret]
