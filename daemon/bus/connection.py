"""Connecting to NATS: reconnect forever, creds file and TLS from config, connection state for /readyz."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client

from daemon.bus import nats_status
from daemon.config import NatsSettings

log = logging.getLogger("castle_bridge.nats")


@dataclass
class ConnectionState:
    """What /readyz reports about the bus."""

    connected: bool = False
    closing: bool = False  # set before a deliberate close, so it is not reported as an outage
    reconnects: int = 0
    last_error: str | None = None
    servers: list[str] = field(default_factory=list)


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file and settings.tls_key_file:
        ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return ctx


async def connect(
    servers: list[str],
    settings: NatsSettings,
    *,
    name: str = "castle-bridge",
    state: ConnectionState | None = None,
) -> Client:
    """Connect and keep reconnecting for ever: a daemon must outlive a NATS restart."""
    nats_status.install()  # before anything is fetched: a publisher's `Status` header is not a status
    state = state or ConnectionState()
    state.servers = servers

    async def disconnected() -> None:
        state.connected = False
        if not state.closing:
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected() -> None:
        state.connected = True
        state.reconnects += 1
        log.info("reconnected to NATS", extra={"reconnects": state.reconnects})

    async def error(exc: Exception) -> None:
        state.last_error = f"{type(exc).__name__}: {exc}"

    async def closed() -> None:
        state.connected = False

    options: dict[str, object] = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "allow_reconnect": True,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        "closed_cb": closed,
    }
    if settings.creds_file:
        options["user_credentials"] = str(settings.creds_file)
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    nc = await nats.connect(**options)  # type: ignore[arg-type]
    state.connected = True
    return nc
