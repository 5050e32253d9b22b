"""Building daemons for tests: settings on the session's nats-server, uuid-named stream and bucket."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats

from daemon.app import Adapters, Daemon
from daemon.config import Settings, load_settings
from daemon.natsserver import NatsServer

WEBHOOK_TOKEN = "test-webhook-token-0123456789"


def daemon_settings(nats_url: str | None, suffix: str | None = None, **sections: dict[str, Any]) -> Settings:
    suffix = suffix or uuid.uuid4().hex[:10]
    base: dict[str, dict[str, Any]] = {
        "nats": {
            "url": nats_url,
            "stream": f"CASTLE_{suffix}",
            "kv_bucket": f"nodes-{suffix}",
            "ack_wait_seconds": 5,
        },
        "http": {"listen": "127.0.0.1:0", "webhook_token": WEBHOOK_TOKEN},
        "scheduler": {"enabled": False},
        "tailscale": {"dns_domain": "magellanic-gondola.ts.net"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(None, **base)


async def remove_bus_objects(server: NatsServer, settings: Settings) -> None:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(settings.nats.stream)
    with contextlib.suppress(Exception):
        await js.delete_key_value(settings.nats.kv_bucket)
    await nc.close()


@contextlib.asynccontextmanager
async def running_daemon(
    server: NatsServer, settings: Settings, adapters: Adapters, **kw: Any
) -> AsyncIterator[Daemon]:
    try:
        async with Daemon(settings, adapters=adapters, **kw) as daemon:
            yield daemon
    finally:
        await remove_bus_objects(server, settings)
