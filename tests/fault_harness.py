"""Fault-injection harness: the daemon as a real `castle-bridge run` process configured only through its
environment, an OTLP sink that keeps what a daemon exports, an in-process castle on any set of NATS
servers, and the one leak scan every fault, bad-input and security scenario ends with.

The leak scan gathers every place a secret could surface (the stream with headers, the KV history, the
logs, the spans, the metrics, talosctl argv and exception texts) and looks for every secret in play: the
AuthKeys minted, the access tokens, the OAuth client secret and the webhook token.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
from aiohttp import web
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from pydantic import BaseModel, SecretStr

from contracts import subjects
from daemon.app import Daemon
from daemon.config import ENV_PREFIX, Settings
from daemon.observability import setup_telemetry
from sim.castle import SimCastle
from tests.busutil import eventually, stream_messages
from tests.castle_fixtures import Castle, castle_settings
from tests.daemon_fixtures import WEBHOOK_TOKEN

DAEMON_EXE = Path(sys.executable).parent / "castle-bridge"

# -- configuration through the environment only ------------------------------------------------------


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict):
        return json.dumps(list(value) if not isinstance(value, dict) else value, default=str)
    return str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """CASTLE_BRIDGE_* variables that make `castle-bridge run` load exactly `settings` (lists as JSON)."""
    env: dict[str, str] = {}
    for section in type(settings).model_fields:
        values: BaseModel = getattr(settings, section)
        for name in type(values).model_fields:
            value = getattr(values, name)
            if value is None:
                continue
            env[f"{ENV_PREFIX}{section.upper()}__{name.upper()}"] = _env_value(value)
    return env


def process_env(settings: Settings, otlp_url: str | None = None) -> dict[str, str]:
    """The daemon process's whole environment: ours minus any castle or OTEL setting, plus its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "OTEL_"))}
    env.update(settings_env(settings))
    if otlp_url:
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                "OTEL_METRIC_EXPORT_INTERVAL": "500",
                "OTEL_SERVICE_NAME": "castle-bridge-fault-test",
            }
        )
    return env


# -- the daemon as a process ----------------------------------------------------------------------


@dataclass
class DaemonProcess:
    """`castle-bridge run` as a child process; its stdout and stderr (its log) go to `log_path`."""

    env: dict[str, str]
    log_path: Path
    argv: tuple[str, ...] = (str(DAEMON_EXE), "run")
    proc: asyncio.subprocess.Process | None = None
    http_url: str | None = None
    starts: int = 0
    kills: int = 0

    @property
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, within: float = 30.0) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.starts += 1
        deadline = time.monotonic() + within
        while self.http_url is None or offset is not None:
            if self.proc.returncode is not None:
                raise AssertionError(f"castle-bridge run exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"castle-bridge run not ready within {within}s:\n{self.log_tail()}")
            for line in self.log_path.read_bytes()[offset:].decode(errors="replace").splitlines():
                entry = _json_line(line)
                if entry.get("message") == "castle-bridge running":
                    self.http_url, offset = entry["http"], None
                    break
            else:
                await asyncio.sleep(0.05)
        await self.wait_ready(deadline - time.monotonic())

    async def wait_ready(self, within: float = 20.0) -> None:
        async def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(base_url=self.http_url or "", timeout=2) as http:
                    return (await http.get("/readyz")).status_code == 200
            return False

        await eventually(ready, within=max(within, 1.0), every=0.1)

    async def kill(self) -> None:
        """SIGKILL: no drain, no flush, in-flight work abandoned mid-step."""
        assert self.proc is not None and self.proc.returncode is None, "daemon is not running"
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1
        self.http_url = None

    async def stop(self, within: float = 40.0) -> int:
        """SIGTERM, the graceful path (flushes telemetry); returns the exit status."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"daemon ignored SIGTERM for {within}s:\n{self.log_tail()}") from None

    async def scrape_metrics(self) -> str:
        async with httpx.AsyncClient(base_url=self.http_url or "", timeout=5) as http:
            return (await http.get("/metrics")).text

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text.splitlines()[-lines:])


def _json_line(line: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        entry = json.loads(line)
        if isinstance(entry, dict):
            return entry
    return {}


# -- an OTLP/HTTP sink -----------------------------------------------------------------------------


@dataclass
class OtlpSink:
    """Receives what a daemon process exports over OTLP/HTTP; the protobuf bodies are kept raw.

    Strings travel as plain UTF-8 inside protobuf, so a secret in a span or metric shows up verbatim.
    """

    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    url: str = ""

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.setdefault(request.path, []).append(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def text(self, path: str) -> str:
        return "\n".join(b.decode("utf-8", "replace") for b in self.bodies.get(path, []))

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[OtlpSink]:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{signal:.*}", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield self
        finally:
            await runner.cleanup()


# -- an in-process castle on any NATS servers ------------------------------------------------------


@contextlib.asynccontextmanager
async def castle_on(urls: list[str], workdir: Path, **extra: dict[str, Any]) -> AsyncIterator[Castle]:
    """Like `simulated_castle`, for servers the test owns (restarted, clustered): the daemon and the
    test's own client are given every URL and reconnect for ever."""
    async with SimCastle(workdir) as sim:
        settings = castle_settings(sim, ",".join(urls), **extra)
        nc = await nats.connect(urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        harness = Castle(sim, settings, None, nc.jetstream())  # type: ignore[arg-type]
        try:
            async with Daemon(settings) as daemon:
                harness.daemon = daemon
                yield harness
        finally:
            with contextlib.suppress(Exception):
                await harness.js.delete_stream(settings.nats.stream)
            with contextlib.suppress(Exception):
                await harness.js.delete_key_value(settings.nats.kv_bucket)
            await nc.close()


async def wait_outcomes(castle: Castle, names: list[str], within: float = 60.0) -> dict[str, str]:
    """`Castle.wait_outcomes` that rides out the bus's own outage: a read that times out or comes back
    short during an election or a restart is a reason to look again, not a failure."""
    seen: dict[str, str] = {}

    async def all_done() -> bool:
        try:
            seen.update(await castle.outcomes())
        except (nats.errors.Error, TimeoutError):
            return False
        return set(names) <= set(seen)

    await eventually(all_done, within=within, every=0.2)
    return seen


async def settled(check: Callable[[], Awaitable[list[str]]], within: float = 20.0) -> None:
    """Poll `check` (it returns what is still wrong) until it returns nothing; reads that fail while the
    bus settles count as "still wrong"; at the deadline the last problems are the failure message."""
    problems: list[str] = ["not checked yet"]

    async def clean() -> bool:
        nonlocal problems
        try:
            problems = await check()
        except (nats.errors.Error, TimeoutError) as exc:
            problems = [f"bus read failed: {type(exc).__name__}"]
        return not problems

    try:
        await eventually(clean, within=within, every=0.2)
    except AssertionError:
        raise AssertionError(f"still wrong after {within}s: {problems}") from None


async def dead_letters(js: JetStreamContext, stream: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in await stream_messages(js, stream, subjects.BRIDGE_DEADLETTER)]


# -- the leak scan -----------------------------------------------------------------------------------


@dataclass
class LeakScan:
    """Texts of every place a secret could surface, by place, and the secrets to look for."""

    secrets: list[str]
    places: dict[str, str] = field(default_factory=dict)

    def add(self, place: str, text: str) -> None:
        self.places[place] = self.places.get(place, "") + "\n" + text

    def leaks(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for place, text in self.places.items():
            hits = [s[:14] + "..." for s in self.secrets if s and s in text]
            if hits:
                found[place] = hits
        return found

    def assert_clean(self, *must_have: str) -> None:
        """No secret anywhere; and the scan is not vacuous (places that must hold something do)."""
        assert any(s.startswith("tskey-auth-") for s in self.secrets), "no AuthKey was minted: scan is moot"
        empty = [p for p in must_have if not self.places.get(p, "").strip()]
        assert not empty, f"leak scan has nothing to look at in {empty}"
        assert self.leaks() == {}, f"secrets leaked: {self.leaks()}"


def spans_text(exporter: InMemorySpanExporter) -> str:
    return "\n".join(
        json.dumps(
            {
                "name": s.name,
                "attrs": dict(s.attributes or {}),
                "status": s.status.description,
                "events": [{"name": e.name, **dict(e.attributes or {})} for e in s.events],
                "resource": dict(s.resource.attributes),
            },
            default=str,
        )
        for s in exporter.get_finished_spans()
    )


def span_exception_texts(exporter: InMemorySpanExporter) -> str:
    return "\n".join(
        json.dumps(dict(e.attributes or {}), default=str)
        for s in exporter.get_finished_spans()
        for e in s.events
        if e.name == "exception"
    )


def process_metrics() -> str:
    return generate_latest(setup_telemetry().registry).decode()


def _exceptions_in_logs(log_text: str) -> str:
    parts = []
    for line in log_text.splitlines():
        entry = _json_line(line)
        for key in ("exception", "error", "reason"):
            if entry.get(key):
                parts.append(str(entry[key]))
    return "\n".join(parts)


async def _messages_text(js: JetStreamContext, stream: str) -> str:
    return "\n".join(
        m.subject + " " + json.dumps(dict(m.headers or {})) + " " + m.data.decode("utf-8", "replace")
        for m in await stream_messages(js, stream)
    )


async def gather_leak_scan(
    sim: SimCastle,
    js: JetStreamContext,
    settings: Settings,
    *,
    logs: str,
    spans: str,
    metrics: str,
    exceptions: str = "",
    argv: Iterable[Iterable[str]] = (),
    extra_secrets: Iterable[str] = (),
) -> LeakScan:
    """Everything a scenario left behind, gathered for `LeakScan.assert_clean`."""
    scan = LeakScan([*sim.secrets(), WEBHOOK_TOKEN, *extra_secrets])
    bus = await _messages_text(js, settings.nats.stream)
    scan.add("stream", bus)
    scan.add("kv", await _messages_text(js, f"KV_{settings.nats.kv_bucket}"))
    scan.add("logs", logs)
    scan.add("spans", spans)
    scan.add("metrics", metrics)
    scan.add("argv", "\n".join(" ".join(a) for a in [*sim.talos.invocations, *argv]))
    # Exception texts travel in log lines, span events, failure/dead-letter reasons and last_error.
    reasons = [
        str(body.get(key, ""))
        for subject in (subjects.BRIDGE_FAILED, subjects.BRIDGE_DEADLETTER)
        for body in [json.loads(m.data) for m in await stream_messages(js, settings.nats.stream, subject)]
        for key in ("reason", "payload")
    ]
    scan.add("exceptions", "\n".join([exceptions, _exceptions_in_logs(logs), *reasons]))
    return scan


async def in_process_leak_scan(
    castle: Castle, logs: str, exporter: InMemorySpanExporter, **kw: Any
) -> LeakScan:
    return await gather_leak_scan(
        castle.sim,
        castle.js,
        castle.settings,
        logs=logs,
        spans=spans_text(exporter),
        metrics=process_metrics(),
        exceptions=span_exception_texts(exporter),
        **kw,
    )
