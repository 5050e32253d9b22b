"""The event runtime against a real nats-server: routing, de-duplication, every outcome, dead letters,
redelivery after a crash, heartbeats and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from contracts import subjects
from contracts.errors import Permanent, Retry, Transient
from contracts.events import BridgeFailed, TalosReady, VmCreated
from daemon.bus.publisher import Publisher
from daemon.bus.runtime import Route, Runtime
from tests.busutil import eventually, payloads, stream_messages

VM = {"name": "tazlab-k8s-worker-1", "ip": "192.168.1.21"}


class Recorder:
    """A handler that records what it got and behaves as told per call."""

    def __init__(self, *behaviours: Any) -> None:
        self.behaviours = list(behaviours)
        self.seen: list[Any] = []
        self.times: list[float] = []

    async def __call__(self, event: Any, deps: Any) -> Any:
        self.seen.append(event)
        self.times.append(time.monotonic())
        behaviour = self.behaviours.pop(0) if self.behaviours else None
        if isinstance(behaviour, BaseException):
            raise behaviour
        if callable(behaviour):
            return await behaviour(event)
        return behaviour


async def start_runtime(nc: Client, stream: str, *routes: Route) -> Runtime:
    runtime = Runtime(nc, Publisher(nc.jetstream()), stream, routes, deps=None, pull_expiry=0.5)
    await runtime.start()
    return runtime


def route(subject: str, handler: Any, durable: str, **kw: Any) -> Route:
    return Route(subject=subject, handler=handler, durable=durable, ack_wait=kw.pop("ack_wait", 5.0), **kw)


async def test_routes_each_subject_to_its_handler_with_the_typed_model(nc, js, castle_stream):
    created, ready = Recorder(), Recorder()
    rt = await start_runtime(
        nc,
        castle_stream,
        route(subjects.VM_CREATED, created, "t-created"),
        route(subjects.TALOS_READY, ready, "t-ready"),
    )
    try:
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())  # plain body, no headers
        await js.publish(subjects.TALOS_READY, json.dumps({**VM, "talos_version": "v1.13.9"}).encode())
        await eventually(lambda: len(created.seen) == 1 and len(ready.seen) == 1)
        assert isinstance(created.seen[0], VmCreated) and created.seen[0].role == "worker"
        assert isinstance(ready.seen[0], TalosReady) and ready.seen[0].talos_version == "v1.13.9"
        await rt.idle(10)
    finally:
        await rt.stop()


async def test_structured_cloudevent_body_and_unknown_fields_are_accepted(nc, js, castle_stream):
    created = Recorder()
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, created, "t-ce"))
    try:
        body = {
            "specversion": "1.0",
            "type": "io.castle.vm.created",
            "source": "/proxmox/pve1",
            "id": "abc",
            "data": {**VM, "vmid": 4242, "colour": "blue"},
        }
        await js.publish(subjects.VM_CREATED, json.dumps(body).encode())
        await eventually(lambda: len(created.seen) == 1)
        assert created.seen[0].vmid == 4242
    finally:
        await rt.stop()


async def test_publish_sets_dedupe_cloudevents_and_trace_headers_and_duplicates_are_dropped(
    nc, js, castle_stream
):
    created = Recorder()
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, created, "t-dup"))
    pub = Publisher(js)
    try:
        event = VmCreated.model_validate(VM)
        first = await pub.publish(event, msg_id="vm.created:tazlab-k8s-worker-1:1")
        second = await pub.publish(event, msg_id="vm.created:tazlab-k8s-worker-1:1")
        assert not first.duplicate and second.duplicate
        await rt.idle(10)
        assert len(created.seen) == 1
        [msg] = await stream_messages(js, castle_stream, subjects.VM_CREATED)
        headers = msg.headers or {}
        assert headers["Nats-Msg-Id"] == "vm.created:tazlab-k8s-worker-1:1"
        assert headers["ce-specversion"] == "1.0" and headers["ce-type"] == "io.castle.vm.created"
        assert headers["ce-source"] == "castle-bridge" and headers["ce-time"].endswith("Z")
        assert headers["ce-id"] and headers["ce-subject"] == "tazlab-k8s-worker-1"
        assert "traceparent" in headers
    finally:
        await rt.stop()


async def test_returned_event_is_published_then_the_input_acked(nc, js, castle_stream):
    async def patched(event: TalosReady) -> BridgeFailed:
        return BridgeFailed(name=event.name, stage="patch", reason="test", retryable=False)

    handler = Recorder(patched)
    rt = await start_runtime(nc, castle_stream, route(subjects.TALOS_READY, handler, "t-out"))
    try:
        await js.publish(subjects.TALOS_READY, json.dumps(VM).encode())
        await rt.idle(10)
        failed = await stream_messages(js, castle_stream, subjects.BRIDGE_FAILED)
        assert [json.loads(m.data)["reason"] for m in failed] == ["test"]
        assert failed[0].headers["Nats-Msg-Id"].startswith("t-out:")
        info = await js.consumer_info(castle_stream, "t-out")
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1
    finally:
        await rt.stop()


async def test_retry_naks_with_the_requested_delay(nc, js, castle_stream):
    handler = Recorder(Retry("node not ready", delay=1.0), None)
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-retry"))
    try:
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(handler.seen) == 2, within=10)
        gap = handler.times[1] - handler.times[0]
        assert 0.9 <= gap < 4.0, gap
        await rt.idle(10)
        assert await payloads(js, castle_stream, subjects.BRIDGE_DEADLETTER) == []
    finally:
        await rt.stop()


async def test_transient_error_is_retried_then_succeeds(nc, js, castle_stream):
    handler = Recorder(Transient("api 503", retry_after=0.2), None)
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-transient"))
    try:
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(handler.seen) == 2)
        await rt.idle(10)
        assert await payloads(js, castle_stream, subjects.BRIDGE_DEADLETTER) == []
    finally:
        await rt.stop()


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"name": "Bad_Name!", "ip": "192.168.1.2"}).encode(), "name: must be a DNS label"),
        (json.dumps({"name": "ok-node", "ip": "999.1.1.1"}).encode(), "ip:"),
        (json.dumps({"ip": "192.168.1.2"}).encode(), "name: Field required"),
        (b"", "empty"),
    ],
)
async def test_invalid_payload_is_dead_lettered_and_the_next_message_handled(
    nc, js, castle_stream, body, reason_part
):
    handler = Recorder()
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-invalid"))
    try:
        await js.publish(subjects.VM_CREATED, body)
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(handler.seen) == 1)
        await rt.idle(10)
        [letter] = await payloads(js, castle_stream, subjects.BRIDGE_DEADLETTER)
        assert letter["subject"] == subjects.VM_CREATED
        assert reason_part in letter["reason"]
        assert letter["deliveries"] == 1 and letter["consumer"] == "t-invalid"
        assert letter["stream_sequence"] == 1
        assert letter["payload"] == body.decode("utf-8", errors="backslashreplace")
    finally:
        await rt.stop()


async def test_permanent_error_is_dead_lettered_with_its_reason(nc, js, castle_stream):
    handler = Recorder(Permanent("talos version v0.9 is not supported"))
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-perm"))
    try:
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(handler.seen) == 1)
        await rt.idle(10)
        [letter] = await payloads(js, castle_stream, subjects.BRIDGE_DEADLETTER)
        assert letter["reason"] == "talos version v0.9 is not supported"
        assert json.loads(letter["payload"]) == VM
        assert len(handler.seen) == 1  # terminated: never delivered again
    finally:
        await rt.stop()


async def test_poison_message_is_dead_lettered_after_max_deliveries(nc, js, castle_stream):
    handler = Recorder(*[RuntimeError("boom")] * 10)
    rt = await start_runtime(
        nc, castle_stream, route(subjects.VM_CREATED, handler, "t-poison", max_deliver=3)
    )
    try:
        # Backoff after a generic error is 1 s, then 2 s: keep the test short with a small max_deliver.
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(handler.seen) == 3, within=15)
        await rt.idle(15)
        [letter] = await payloads(js, castle_stream, subjects.BRIDGE_DEADLETTER)
        assert letter["reason"].startswith("gave up after 3 deliveries: RuntimeError: boom")
        assert letter["deliveries"] == 3
    finally:
        await rt.stop()


async def test_a_message_whose_handler_never_finished_is_redelivered_to_another_instance(
    nats_server, castle_stream
):
    # Instance A takes the message and "crashes": its connection dies without acking.
    nc_a = await nats.connect(nats_server.url)
    js_a = nc_a.jetstream()
    started = asyncio.Event()

    async def hang(event: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    rt_a = await start_runtime(
        nc_a, castle_stream, route(subjects.VM_CREATED, Recorder(hang), "t-crash", ack_wait=1.0)
    )
    await js_a.publish(subjects.VM_CREATED, json.dumps(VM).encode())
    await asyncio.wait_for(started.wait(), 10)
    # Simulate the crash: the connection dies first (nothing can be settled any more), then every task.
    await nc_a.close()
    for b in rt_a._bound:
        for t in [*b.workers, b.heartbeat]:
            if t is not None:
                t.cancel()
        if b.consumer is not None:
            await b.consumer.close()

    nc_b = await nats.connect(nats_server.url)
    survivor = Recorder()
    rt_b = await start_runtime(
        nc_b, castle_stream, route(subjects.VM_CREATED, survivor, "t-crash", ack_wait=1.0)
    )
    try:
        await eventually(lambda: len(survivor.seen) == 1, within=10)
        assert survivor.seen[0].name == VM["name"]
        await rt_b.idle(10)
    finally:
        await rt_b.stop()
        await nc_b.close()


async def test_slow_handler_keeps_its_message_with_progress_heartbeats(nc, js, castle_stream):
    async def slow(event: Any) -> None:
        await asyncio.sleep(2.5)

    handler = Recorder(slow)
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-slow", ack_wait=1.0))
    try:
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await rt.idle(10)
        assert len(handler.seen) == 1  # never redelivered although it ran 2.5x ack_wait
    finally:
        await rt.stop()


async def test_graceful_stop_finishes_in_flight_work_and_fetches_nothing_more(nc, js, castle_stream):
    release = asyncio.Event()

    async def busy(event: Any) -> None:
        await release.wait()

    handler = Recorder(busy)
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-stop"))
    await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
    await eventually(lambda: len(handler.seen) == 1)
    stopping = asyncio.create_task(rt.stop(grace=10))
    await asyncio.sleep(0.3)
    assert not stopping.done()  # waits for the in-flight handler
    await js.publish(subjects.VM_CREATED, json.dumps({**VM, "name": "after-stop"}).encode())
    release.set()
    t0 = time.monotonic()
    await asyncio.wait_for(stopping, 5)
    assert time.monotonic() - t0 < 2.0
    info = await js.consumer_info(castle_stream, "t-stop")
    assert info.ack_floor.stream_seq == 1  # the in-flight one was acked
    # The later one, if a still-open pull request brought it, was handed back, not left to its ack wait.
    assert info.num_ack_pending == 0 and info.num_pending + info.num_redelivered >= 1
    assert [e.name for e in handler.seen] == [VM["name"]]  # the later one was left for the next start


async def test_concurrency_is_bounded_per_route(nc, js, castle_stream):
    running = 0
    peak = 0

    async def track(event: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    handler = Recorder(*[track] * 40)
    rt = await start_runtime(nc, castle_stream, route(subjects.VM_CREATED, handler, "t-conc", concurrency=4))
    try:
        for i in range(40):
            await js.publish(subjects.VM_CREATED, json.dumps({**VM, "name": f"node-{i}"}).encode())
        await eventually(lambda: len(handler.seen) == 40, within=15)
        await rt.idle(10)
        assert peak == 4
    finally:
        await rt.stop()
