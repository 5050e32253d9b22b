"""Helpers for tests that read what landed on the bus."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


async def stream_messages(js: JetStreamContext, stream: str, subject: str = ">") -> list[Msg]:
    """Every message currently in `stream` on `subject`, oldest first (an ephemeral consumer)."""
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=5.0
        ),
    )
    out: list[Msg] = []
    try:
        # The consumer knows how many messages match at creation: fetch exactly those, no idle wait.
        total = (await sub.consumer_info()).num_pending or 0
        while len(out) < total:
            out.extend(await sub.fetch(min(256, total - len(out)), timeout=5))
    finally:
        await sub.unsubscribe()
    return out


async def payloads(js: JetStreamContext, stream: str, subject: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in await stream_messages(js, stream, subject)]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float = 10.0, every: float = 0.05
) -> None:
    """Poll `check` until it is true; fail with a clear message at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s: {getattr(check, '__name__', check)}")
        await asyncio.sleep(every)
