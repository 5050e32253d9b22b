"""A TLS Vault stand-in for the simulated castle: `GET /v1/sys/health` with a settable state.

It answers the status codes and JSON body a real Vault answers for each state, over TLS with a
certificate naming only the MagicDNS FQDN, on its own loopback address. It records the SNI names and
Host headers it saw, so tests can prove the prober presented the MagicDNS name while dialling an IP.
"""

from __future__ import annotations

import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from sim.pki import CertificateAuthority, write_pair

VaultState = Literal["active", "standby", "perfstandby", "drsecondary", "sealed", "uninitialized"]

# Vault's documented /v1/sys/health codes for each state (defaults, no query parameters).
STATUS_CODES: dict[str, int] = {
    "active": 200,
    "standby": 429,
    "drsecondary": 472,
    "perfstandby": 473,
    "uninitialized": 501,
    "sealed": 503,
}


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    host: str


class VaultStandIn:
    """A Vault health endpoint over TLS; start with `await start()` (or `async with`)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        fqdn: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state: VaultState = "active",
        version: str = "1.17.2",
        cluster_name: str = "vault-cluster-castle",
    ) -> None:
        self.fqdn = fqdn
        self.host = host
        self.state: VaultState = state
        self.version = version
        self.cluster_name = cluster_name
        self.cluster_id = str(uuid.uuid4())
        self.sni_names: list[str | None] = []
        self.requests: list[SeenRequest] = []
        self._ca = ca
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Vault stand-in is not started")
        return self._port

    @property
    def url(self) -> str:
        """The URL a client configures: the FQDN (SNI, Host) at the bound port."""
        return f"https://{self.fqdn}:{self.port}"

    def status_code(self) -> int:
        return STATUS_CODES[self.state]

    def health_body(self) -> dict[str, object]:
        """The JSON Vault answers for the current state."""
        initialized = self.state != "uninitialized"
        sealed = self.state in ("sealed", "uninitialized")
        body: dict[str, object] = {
            "initialized": initialized,
            "sealed": sealed,
            "standby": self.state in ("standby", "perfstandby", "sealed", "uninitialized"),
            "performance_standby": self.state == "perfstandby",
            "replication_performance_mode": "unknown" if sealed else "disabled",
            "replication_dr_mode": "secondary"
            if self.state == "drsecondary"
            else "unknown"
            if sealed
            else "disabled",
            "server_time_utc": int(time.time()),
            "version": self.version,
        }
        # A sealed or uninitialised Vault cannot read its cluster identity, so it leaves it out.
        if not sealed:
            body["cluster_name"] = self.cluster_name
            body["cluster_id"] = self.cluster_id
        return body

    async def start(self) -> VaultStandIn:
        app = web.Application()
        app.router.add_get("/v1/sys/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port, ssl_context=self._ssl_context())
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> VaultStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        cert_pem, key_pem = self._ca.issue([self.fqdn])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # ssl loads keys from files only; the pair lives just long enough to be read.
        with tempfile.TemporaryDirectory(prefix="vault-stand-in-") as tmp:
            cert_file, key_file = write_pair(Path(tmp), "vault", cert_pem, key_pem)
            context.load_cert_chain(cert_file, key_file)

        def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.sni_names.append(name)

        context.sni_callback = remember_sni
        return context

    async def _health(self, request: web.Request) -> web.Response:
        self.requests.append(SeenRequest(request.method, request.path, request.headers.get("Host", "")))
        return web.json_response(self.health_body(), status=self.status_code(), headers=_VAULT_HEADERS)

    async def _not_found(self, request: web.Request) -> web.Response:
        self.requests.append(SeenRequest(request.method, request.path, request.headers.get("Host", "")))
        return web.json_response({"errors": []}, status=404, headers=_VAULT_HEADERS)


_VAULT_HEADERS = {
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}
