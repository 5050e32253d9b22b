"""What several commands share: reaching the bus (configured or embedded) and printing tables."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from nats.aio.client import Client

from daemon.app import embedded_url_file
from daemon.bus.connection import ConnectionState, connect
from daemon.config import ConfigError, Settings

# The daemon reconnects for ever; a command must give up and say so instead of hanging.
CONNECT_TIMEOUT_SECONDS = 10.0


class BusUnreachable(ConfigError):
    """NATS did not answer. Reported like bad configuration (one line, exit 2): the URL is what to check."""


def shown_url(url: str) -> str:
    """A NATS URL without its user:password part, fit for a message."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def bus_servers(settings: Settings) -> list[str]:
    """The configured NATS URL(s), or the embedded server a local `castle-bridge run` started."""
    if settings.nats.servers:
        return settings.nats.servers
    url_file = embedded_url_file(settings)
    if url_file.is_file():
        return [url_file.read_text().strip()]
    raise ConfigError(
        "CASTLE_BRIDGE_NATS__URL (nats.url) is not set and no embedded server is running here "
        f"(no {url_file}); start `castle-bridge run` or point the command at your NATS"
    )


@contextlib.asynccontextmanager
async def bus(settings: Settings, timeout: float | None = None) -> AsyncIterator[Client]:
    servers = bus_servers(settings)
    timeout = CONNECT_TIMEOUT_SECONDS if timeout is None else timeout
    state = ConnectionState()
    try:
        nc = await asyncio.wait_for(
            connect(servers, settings.nats, name="castle-bridge cli", state=state), timeout
        )
    except TimeoutError:
        raise BusUnreachable(
            f"NATS at {', '.join(shown_url(s) for s in servers)} did not answer within {timeout:g}s; "
            "check CASTLE_BRIDGE_NATS__URL (nats.url) and that the server runs"
        ) from None
    try:
        yield nc
    finally:
        state.closing = True
        await nc.close()


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)
