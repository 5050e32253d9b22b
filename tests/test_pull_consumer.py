"""The continuous pull consumer on a real nats-server: capacity, request expiry, status messages, repair."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from contracts import subjects
from daemon.bus.publisher import Publisher
from daemon.bus.pull import PullConsumer, delivery_of
from daemon.bus.runtime import Route, Runtime
from tests.busutil import eventually

VM = {"name": "tazlab-k8s-worker-1", "ip": "192.168.1.50"}


def _msg(reply: str) -> Msg:
    return Msg(_client=None, subject="vm.created", reply=reply)  # type: ignore[arg-type]


def test_delivery_count_and_stream_sequence_come_from_either_ack_subject_layout() -> None:
    v1 = _msg("$JS.ACK.CASTLE.castle-bridge-await-talos.3.1234.99.1700000000000000000.5")
    v2 = _msg("$JS.ACK._.ACCOUNTHASH.CASTLE.castle-bridge-await-talos.2.77.10.1700000000000000000.0.r4nd")
    for msg, expected in ((v1, (3, 1234)), (v2, (2, 77))):
        assert delivery_of(msg) == expected == (msg.metadata.num_delivered, msg.metadata.sequence.stream)
    with pytest.raises(NotJSMessageError):
        delivery_of(_msg("_INBOX.not-an-ack-subject"))


async def _durable(js: JetStreamContext, stream: str, name: str) -> str:
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT, filter_subject=subjects.VM_CREATED),
    )
    return name


async def test_never_holds_more_than_its_capacity_and_takes_more_as_messages_are_released(
    nc: Client, js: JetStreamContext, castle_stream: str
) -> None:
    for i in range(40):
        await js.publish(subjects.VM_CREATED, json.dumps({**VM, "vmid": i + 1}).encode())
    held: list[Msg] = []
    consumer = PullConsumer(
        nc, castle_stream, await _durable(js, castle_stream, "cap"), held.append, capacity=8
    )
    await consumer.start()
    try:
        await eventually(lambda: len(held) == 8)
        await asyncio.sleep(0.5)  # nothing more arrives while all eight are held
        assert len(held) == 8 and consumer.held == 8 and consumer.outstanding == 0
        for msg in held[:5]:
            await msg.ack()
        consumer.release(5)
        await eventually(lambda: len(held) == 13)
        await asyncio.sleep(0.3)
        assert len(held) == 13 and consumer.held == 8
        assert len({delivery_of(m)[1] for m in held}) == 13  # thirteen different stored messages
    finally:
        await consumer.stop_pulling()
        await consumer.close()


async def test_an_idle_consumers_requests_expire_and_a_later_message_still_arrives_at_once(
    nc: Client, js: JetStreamContext, castle_stream: str
) -> None:
    got: list[Msg] = []
    consumer = PullConsumer(
        nc, castle_stream, await _durable(js, castle_stream, "idle"), got.append, capacity=4, expires=0.3
    )
    await consumer.start()
    try:
        await asyncio.sleep(1.0)  # three expiries: each 408 gives the capacity back, a new request follows
        await eventually(lambda: consumer.outstanding == 4, within=1.0)  # (not caught between the two)
        assert got == []
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(got) == 1, within=1.0)
    finally:
        await consumer.stop_pulling()
        await consumer.close()
    assert consumer.outstanding == 0  # stopping waits for the open request to end


async def test_a_stored_message_with_its_own_status_header_is_delivered_not_taken_for_a_status(
    nc: Client, js: JetStreamContext, castle_stream: str
) -> None:
    await js.publish(subjects.VM_CREATED, json.dumps(VM).encode(), headers={"Status": "408"})
    got: list[Msg] = []
    consumer = PullConsumer(
        nc, castle_stream, await _durable(js, castle_stream, "hdr"), got.append, capacity=2
    )
    await consumer.start()
    try:
        await eventually(lambda: len(got) == 1)
        assert got[0].headers == {"Status": "408"} and json.loads(got[0].data) == VM
    finally:
        await consumer.stop_pulling()
        await consumer.close()


async def test_the_runtime_puts_back_a_deleted_consumer_and_goes_on_consuming(
    nc: Client, js: JetStreamContext, castle_stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[Any] = []

    async def handler(event: Any, deps: Any) -> None:
        handled.append(event)

    route = Route(subjects.VM_CREATED, handler, "t-repair", ack_wait=5.0)
    runtime = Runtime(nc, Publisher(js), castle_stream, [route], deps=None, pull_expiry=0.3)
    await runtime.start()
    caplog.set_level(logging.WARNING, logger="castle_bridge.runtime")
    try:
        await js.delete_consumer(castle_stream, "t-repair")
        await asyncio.sleep(0.8)
        await js.publish(subjects.VM_CREATED, json.dumps(VM).encode())
        await eventually(lambda: len(handled) == 1, within=10)
        assert (await js.consumer_info(castle_stream, "t-repair")).config.ack_wait == 5.0
        messages = [r.getMessage() for r in caplog.records]
        assert "consumer was missing and has been created again" in messages
    finally:
        await runtime.stop(grace=2)


async def test_under_steady_load_it_stays_within_capacity_and_keeps_no_stale_requests(
    nc: Client, js: JetStreamContext, castle_stream: str
) -> None:
    total, capacity = 600, 8
    for i in range(total):
        await js.publish(subjects.VM_CREATED, json.dumps({**VM, "vmid": i + 1}).encode())
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    consumer = PullConsumer(
        nc, castle_stream, await _durable(js, castle_stream, "steady"), queue.put_nowait, capacity=capacity
    )
    await consumer.start()
    seen: set[int] = set()
    worst = 0
    try:
        while len(seen) < total:
            msg = await asyncio.wait_for(queue.get(), 10)
            worst = max(worst, consumer.outstanding + consumer.held)
            seen.add(delivery_of(msg)[1])
            await msg.ack()
            consumer.release()
        # Fulfilled requests are forgotten as they are fulfilled, not only when their expiry passes (some
        # hundred requests were made; only those still owed messages may be left).
        assert len(consumer._requests) <= capacity // 2
    finally:
        await consumer.stop_pulling()
        await consumer.close()
    assert worst <= capacity and len(seen) == total
