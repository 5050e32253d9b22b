"""What several commands share: reaching the bus (configured or embedded) and printing tables."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from nats.aio.client import Client

from daemon.app import embedded_url_file
from daemon.bus.connection import ConnectionState, connect
from daemon.config import ConfigError, Settings


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
async def bus(settings: Settings) -> AsyncIterator[Client]:
    state = ConnectionState()
    nc = await connect(bus_servers(settings), settings.nats, name="castle-bridge cli", state=state)
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
