"""Bad input: header injection below nats-py (raw protocol frames) never hides a stored event from the
daemon: a valid one is handled, an invalid one dead-lettered. (The property-based suite follows.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects
from tests.castle_fixtures import Castle, LogCapture, simulated_castle
from tests.fault_harness import in_process_leak_scan, settled

# -- following what happened --------------------------------------------------------------------------


class DeadLetters:
    """Dead letters as they are published (a core subscription), by the stream sequence they stand for."""

    def __init__(self) -> None:
        self.by_sequence: dict[int, dict[str, Any]] = {}

    async def _receive(self, msg: Any) -> None:
        letter = json.loads(msg.data)
        self.by_sequence[letter["stream_sequence"]] = letter

    async def watch(self, nc: Client) -> None:
        await nc.subscribe(subjects.BRIDGE_DEADLETTER, cb=self._receive)

    async def wait_for(self, sequence: int, within: float = 5.0) -> dict[str, Any] | None:
        deadline = asyncio.get_running_loop().time() + within
        while sequence not in self.by_sequence and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.by_sequence.get(sequence)


async def _healthy(castle: Castle, logs: LogCapture) -> None:
    assert castle.daemon is not None and castle.daemon.http_url
    async with httpx.AsyncClient(base_url=castle.daemon.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["consumers_bound"] is True, ready.text
    # A message mistaken for a server status used to make fetch fail (and drop its whole batch).
    assert "fetch failed" not in logs.text


# -- header injection below nats-py: raw protocol frames -------------------------------------------------


async def _raw_publish(url: str, subject: str, header_block: bytes, body: bytes) -> dict[str, Any]:
    """HPUB a header block exactly as given (nats-py would flatten CR/LF and refuse odd names), with a
    reply inbox so JetStream's answer says whether the message was stored."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        inbox = f"_INBOX.raw{uuid.uuid4().hex}"
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        frame = f"HPUB {subject} {inbox} {len(header_block)} {len(header_block) + len(body)}\r\n".encode()
        writer.write(f"CONNECT {json.dumps(connect)}\r\nSUB {inbox} 1\r\n".encode())
        writer.write(frame + header_block + body + b"\r\nPING\r\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line.startswith(b"-ERR"):
                return {"refused": line.decode(errors="replace").strip()}
            if line.startswith(b"MSG "):  # MSG <subject> <sid> <bytes>
                data = await reader.readexactly(int(line.split()[-1]) + 2)
                return dict(json.loads(data[:-2]))
            if line.startswith(b"HMSG "):  # HMSG <subject> <sid> <header bytes> <total bytes>: a status
                header_size, total = (int(n) for n in line.split()[-2:])
                data = await reader.readexactly(total + 2)
                return {"refused": data[:header_size].decode(errors="replace").strip()}
    finally:
        writer.close()


RAW_FRAMES = [
    # (what it tries, header block, body valid?)
    ("CRLF-injected Status header", b"NATS/1.0\r\nX-Note: a\r\nStatus: 404\r\n\r\n", True),
    ("inline status on the version line", b"NATS/1.0 503\r\n\r\n", True),
    ("heartbeat look-alike", b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", False),
    ("non-UTF-8 header value", b"NATS/1.0\r\nX-Bin: \xff\xfe\xfd\r\n\r\n", False),
    ("non-ASCII header name", b"NATS/1.0\r\n\xc3\xa9vil: x\r\n\r\n", True),
    ("header line without a colon", b"NATS/1.0\r\nno colon here\r\n\r\n", True),
    ("duplicated and forged ids", b"NATS/1.0\r\nNats-Msg-Id: raw-a\r\nNats-Msg-Id: raw-b\r\n\r\n", False),
    (
        "garbage traceparent, lying ce-type",
        b"NATS/1.0\r\ntraceparent: \x00\x01zz\r\nce-type: io.castle.x\r\n\r\n",
        True,
    ),
]


async def test_raw_header_injection_never_hides_an_event_from_the_daemon(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    """Whatever the header block says, a stored event is seen: handled if valid, dead-lettered if not."""
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            assert castle.daemon is not None and castle.daemon.state is not None
            nc = await nats.connect(nats_server.url)
            letters = DeadLetters()
            await letters.watch(nc)
            stored: dict[int, tuple[str, bool]] = {}
            for what, header_block, valid in RAW_FRAMES:
                body = json.dumps({"name": f"gone-{len(stored)}"} if valid else {"name": 7}).encode()
                answer = await _raw_publish(nats_server.url, subjects.VM_DESTROYED, header_block, body)
                if "seq" in answer and not answer.get("duplicate"):
                    stored[answer["seq"]] = (what, valid)
            assert len(stored) >= len(RAW_FRAMES) - 2, f"the server refused most frames: {stored}"
            durable = "castle-bridge-forget-node"
            print(f"raw frames stored: {sorted(w for w, _ in stored.values())}")

            async def all_seen() -> list[str]:
                info = await nc.jetstream().consumer_info(castle.stream, durable)
                problems = [
                    f"{w}: never acknowledged"
                    for s, (w, _) in stored.items()
                    if s > (info.ack_floor.stream_seq or 0)
                ]
                for seq, (what, valid) in stored.items():
                    if valid == (seq in letters.by_sequence):
                        problems.append(f"{what}: {'dead-lettered' if valid else 'not dead-lettered'}")
                return problems

            await settled(all_seen)
            await _healthy(castle, logs)
            await nc.close()
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean("stream", "kv", "logs", "spans")
