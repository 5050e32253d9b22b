"""Bad input, property-based: malformed, oversized, wrongly typed and hostile events (header injection,
non-UTF-8 bodies, forged de-duplication ids, garbage trace context, a content-type that lies) thrown at
every subject the daemon consumes, through one long-lived daemon per test.

The properties: every hostile message that the bus stored lands in `bridge.deadletter` on its first
delivery with a reason; valid events interleaved with them (some wearing hostile headers) are all handled;
the daemon stays healthy. The webhook's body gets the same treatment: a 4xx with a reason, nothing
published, valid hooks in between accepted. Strategies and profiles live in tests/hostile_inputs.py.

Hypothesis runs in a worker thread and drives the daemon's event loop with run_coroutine_threadsafe, so
each example is published, followed to its outcome and shrunk like any property, while the daemon, the
castle and the bus live for the whole test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats.errors
import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects
from daemon.bus.codec import DEADLETTER_PAYLOAD_CHARS
from daemon.routes import build_routes
from tests.castle_fixtures import Castle, LogCapture, simulated_castle
from tests.daemon_fixtures import WEBHOOK_TOKEN
from tests.fault_harness import in_process_leak_scan, settled
from tests.hostile_inputs import (
    PROFILE,
    Message,
    hostile_hooks,
    hostile_messages,
    lying_content_type,
    valid_with_hostile_headers,
)

T = TypeVar("T")


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


REFUSED_AT_PUBLISH = (nats.errors.BadHeaderError, nats.errors.MaxPayloadError, nats.js.errors.APIError)


async def _publish(nc: Client, m: Message) -> Any:
    """The PubAck, or the error with which the client or JetStream refused to store the message."""
    try:
        return await nc.jetstream().publish(m.subject, m.body, headers=m.headers, timeout=10)
    except REFUSED_AT_PUBLISH as exc:
        return exc


def _driver(loop: asyncio.AbstractEventLoop):  # type: ignore[no-untyped-def]
    def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    return run


async def _healthy(castle: Castle, logs: LogCapture) -> None:
    assert castle.daemon is not None and castle.daemon.http_url
    async with httpx.AsyncClient(base_url=castle.daemon.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["consumers_bound"] is True, ready.text
    # A message mistaken for a server status used to make fetch fail (and drop its whole batch).
    assert "fetch failed" not in logs.text


# The daemon's event loop (another thread) draws retry jitter from `random` while Hypothesis generates
# here; Hypothesis takes that for a strategy using `random`. Ours do not.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_hostile_events_on_every_subject_are_dead_lettered_and_valid_ones_interleaved_are_handled(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    loop = asyncio.get_running_loop()
    run = _driver(loop)
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            assert castle.daemon is not None and castle.daemon.state is not None
            durable = {r.subject: r.durable for r in build_routes(castle.settings, castle.daemon.state)}
            nc = await nats.connect(nats_server.url)
            letters = DeadLetters()
            await letters.watch(nc)
            nodes = {f"tazlab-k8s-worker-{i}": castle.born(f"tazlab-k8s-worker-{i}") for i in (1, 2, 3)}
            await castle.publish_created("tazlab-k8s-worker-1", nodes["tazlab-k8s-worker-1"])
            refused: list[str] = []
            valid: list[int] = []

            @PROFILE
            @given(
                st.one_of(hostile_messages(), lying_content_type()), st.none() | valid_with_hostile_headers()
            )
            def every_hostile_message_is_dead_lettered(m: Message, ok: Message | None) -> None:
                ack = run(_publish(nc, m))
                if isinstance(ack, Exception):
                    refused.append(type(ack).__name__)  # never stored: nothing to lose
                elif not ack.duplicate:
                    letter = run(letters.wait_for(ack.seq))
                    assert letter is not None, f"no dead letter for {m} (seq {ack.seq})"
                    assert letter["subject"] == m.subject and letter["consumer"] == durable[m.subject]
                    assert letter["deliveries"] == 1, f"refused only after retries: {letter['reason']}"
                    assert letter["reason"] and len(letter["payload"]) <= DEADLETTER_PAYLOAD_CHARS + 40
                if ok is not None:
                    stored = run(_publish(nc, ok))
                    assert not isinstance(stored, Exception), f"valid event refused: {stored!r}"
                    if stored.duplicate:  # its forged Nats-Msg-Id was used before: JetStream kept the first
                        refused.append("valid event with a re-used Nats-Msg-Id: de-duplicated")
                    else:
                        valid.append(stored.seq)

            await castle.publish_created("tazlab-k8s-worker-2", nodes["tazlab-k8s-worker-2"])
            await asyncio.to_thread(every_hostile_message_is_dead_lettered)
            await castle.publish_created("tazlab-k8s-worker-3", nodes["tazlab-k8s-worker-3"])
            assert await castle.wait_outcomes(list(nodes), within=60) == dict.fromkeys(nodes, "verified")

            forget = await nc.jetstream().consumer_info(castle.stream, durable[subjects.VM_DESTROYED])

            async def valid_ones_all_handled() -> list[str]:
                info = await nc.jetstream().consumer_info(castle.stream, durable[subjects.VM_DESTROYED])
                problems = [
                    f"valid event dead-lettered: {letters.by_sequence[s]}"
                    for s in valid
                    if s in letters.by_sequence
                ]
                if info.num_pending or info.num_ack_pending:
                    problems.append(f"vm.destroyed pending={info.num_pending} unacked={info.num_ack_pending}")
                if valid and (info.ack_floor.stream_seq or 0) < max(valid):
                    problems.append(f"ack floor {info.ack_floor.stream_seq} below {max(valid)}")
                return problems

            await settled(valid_ones_all_handled)
            assert valid and forget is not None
            await _healthy(castle, logs)
            await nc.close()
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean("stream", "kv", "logs", "spans", "metrics", "argv")
    print(
        f"hostile: {len(letters.by_sequence)} dead-lettered; not stored: {dict(Counter(refused))}; "
        f"valid: {len(valid)}"
    )


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


# -- the webhook's body -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_hostile_webhook_bodies_get_a_4xx_with_a_reason_and_publish_nothing(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    run = _driver(asyncio.get_running_loop())
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            assert castle.daemon is not None and castle.daemon.http_url
            auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
            http = httpx.AsyncClient(base_url=castle.daemon.http_url, headers=auth, timeout=30)
            name = "tazlab-k8s-worker-1"
            ip = castle.born(name)
            accepted: list[str] = []
            statuses: list[int] = []

            async def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
                return await http.post("/v1/hooks/proxmox", content=body, headers=headers)

            @PROFILE
            @given(hostile_hooks(), st.booleans())
            def every_hostile_hook_is_refused_with_a_reason(
                hook: tuple[str, bytes, dict[str, str]], then_valid: bool
            ) -> None:
                what, body, headers = hook
                try:
                    answer = run(post(body, headers))
                except httpx.LocalProtocolError:
                    return  # the client would not even send it (a header value it cannot encode)
                statuses.append(answer.status_code)
                assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:200]}"
                assert answer.json()["error"], what
                if then_valid:
                    gone = f"gone-{uuid.uuid4().hex[:8]}"
                    ok = run(
                        post(
                            json.dumps({"event": "destroyed", "name": gone}).encode(),
                            {"Content-Type": "application/json"},
                        )
                    )
                    assert ok.status_code == 202, ok.text
                    accepted.append(gone)

            created = {"name": name, "ip": ip, "phase": "post-start"}
            assert (await http.post("/v1/hooks/proxmox", json=created)).status_code == 202
            await asyncio.to_thread(every_hostile_hook_is_refused_with_a_reason)
            await http.aclose()
            assert await castle.wait_outcomes([name], within=40) == {name: "verified"}
            published = [e["name"] for e in await castle.events(subjects.VM_DESTROYED)]
            assert sorted(published) == sorted(accepted), "the webhook published something it refused"
            assert [e["name"] for e in await castle.events(subjects.VM_CREATED)] == [name]
            await _healthy(castle, logs)
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean("stream", "kv", "logs", "spans")
    print(f"webhook: refused {len(statuses)} ({sorted(set(statuses))}), accepted {len(accepted)} valid")
