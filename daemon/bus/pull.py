"""A continuous pull from one durable JetStream consumer, like the `consume()` of the newer NATS clients.

nats-py only offers `fetch(batch)`: a new inbox and subscription per batch, and a task per message
(`wait_for(next_msg())`). Those cost more than everything else the runtime does for a message
(bench/throughput.py). Here one inbox subscription lives as long as the consumer; pull requests
(`$JS.API.CONSUMER.MSG.NEXT`, batch + expiry) are sent whenever enough capacity is free, and every
message lands in the same callback.

Capacity is the route's concurrency: messages requested but not yet delivered plus messages delivered
and not yet released never exceed it, so a replica never holds more than it can work on and the others
get the rest. A request is over when its last message arrives or the server ends it (408 at its expiry,
409/503 when the consumer is gone); one whose end was never seen (a reconnect, a server restart) is
written off a grace period after its expiry, so capacity can never leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.redact import redact
from daemon.bus.nats_status import is_stored

log = logging.getLogger("castle_bridge.runtime")

_GRACE = 1.0  # after a request's expiry, how long its 408 may still be on the way
_RETRY_PAUSE = 0.5  # after the server could not take a request (no consumer, not connected)


def _status_of(msg: Msg) -> str | None:
    """The status code of a message from the server about a pull request; None for a stored message.

    A stored message always has its ack subject as reply, whatever headers its publisher gave it (a
    publisher's own `Status` header must not make an event vanish, see daemon/bus/nats_status.py).
    """
    if is_stored(msg) or not msg.headers:
        return None
    return msg.headers.get("Status")


def delivery_of(msg: Msg) -> tuple[int, int]:
    """(times delivered, stream sequence) of a stored message, read off its ack subject.

    `Msg.metadata` builds four objects and a timestamp per message for these two numbers. The ack subject
    is `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...` (9 tokens), or with a domain and an
    account hash after `ACK` (12 or more tokens, JetStream 2.9+).
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5])
    if len(tokens) >= 11:
        return int(tokens[6]), int(tokens[7])
    meta = msg.metadata  # raises nats-py's own error for anything else
    return meta.num_delivered, meta.sequence.stream


class PullConsumer:
    """Keeps pull requests open on one durable consumer and hands each message to `deliver`."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        deliver: Callable[[Msg], None],
        *,
        capacity: int,
        expires: float = 1.0,
        api_prefix: str = "$JS.API",
        recreate: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._nc = nc
        self._durable = durable
        self._deliver = deliver
        self._capacity = capacity
        # Ask again once half the capacity is free, so requests come in batches, not one per message.
        self._batch_floor = max(1, capacity // 2)
        self._expires = expires
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pulling = False
        self.held = 0  # delivered, not yet released
        # Open requests, oldest first: [write-off time, messages still owed]. The server serves a
        # consumer's waiting requests in order, so each message counts against the oldest.
        self._requests: deque[list[float]] = deque()
        self._last_warning = 0.0
        self._paused_until = 0.0
        # Called before asking again when the server says the consumer is gone (an operator deleted it,
        # a stream was restored): the daemon puts it back instead of asking a missing consumer forever.
        self._recreate = recreate
        self._missing = False

    @property
    def outstanding(self) -> int:
        """Messages requested and not yet delivered."""
        return int(sum(owed for _, owed in self._requests))

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        self._pulling = True
        self._task = asyncio.create_task(self._pull_loop(), name=f"pull:{self._durable}")

    def release(self, n: int = 1) -> None:
        """`n` delivered messages are settled (or handed back): their capacity is free again."""
        self.held -= n
        self._wake.set()

    async def stop_pulling(self) -> None:
        """Send no more requests and wait until the open ones are over (their expiry at most)."""
        self._pulling = False
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._expires + _GRACE):
                while self.outstanding > 0:
                    self._wake.clear()
                    await self._wake.wait()

    async def close(self) -> None:
        self._pulling = False
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _pull_loop(self) -> None:
        while self._pulling:
            if (pause := self._paused_until - time.monotonic()) > 0:
                await asyncio.sleep(pause)
                continue
            if self._missing and self._recreate is not None:
                try:
                    await self._recreate()
                    log.warning(
                        "consumer was missing and has been created again", extra={"consumer": self._durable}
                    )
                    self._missing = False
                except Exception as exc:
                    self._warn("consumer is missing and could not be created again", error=redact(str(exc)))
                    self._paused_until = time.monotonic() + _RETRY_PAUSE
                    continue
            self._write_off_lapsed()
            free = self._capacity - self.outstanding - self.held
            if free > 0 and (free >= self._batch_floor or self.outstanding == 0):
                await self._request(free)
                continue
            self._wake.clear()
            wait = self._requests[0][0] - time.monotonic() if self._requests else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _request(self, batch: int) -> None:
        body = json.dumps({"batch": batch, "expires": int(self._expires * 1e9)}).encode()
        try:
            await self._nc.publish(self._next_subject, body, reply=self._inbox)
        except Exception as exc:  # closed or reconnecting with a full buffer: ask again shortly
            self._warn("pull request not sent; retrying", error=redact(str(exc)))
            self._paused_until = time.monotonic() + _RETRY_PAUSE
            return
        self._requests.append([time.monotonic() + self._expires + _GRACE, batch])

    def _write_off_lapsed(self) -> None:
        now = time.monotonic()
        while self._requests and self._requests[0][0] <= now:
            self._requests.popleft()

    def _request_over(self) -> None:
        """The server ended the oldest open request: nothing more comes for it."""
        if self._requests:
            self._requests.popleft()
        self._wake.set()

    async def _on_message(self, msg: Msg) -> None:
        status = _status_of(msg)
        if status is None:
            if self._requests:
                oldest = self._requests[0]
                oldest[1] -= 1
                if oldest[1] <= 0:  # fulfilled: the server sends nothing more about it
                    self._requests.popleft()
                    self._wake.set()
            self.held += 1
            self._deliver(msg)
            return
        if status == "100":  # idle heartbeat (not requested, harmless)
            return
        if status in ("404", "408"):  # no messages / request expired: the normal end of an idle request
            self._request_over()
            return
        # 409 (consumer deleted, leadership change, limits), 503 (no responders: no such consumer yet).
        description = msg.headers.get("Description", "") if msg.headers else ""
        self._warn("pull request ended by the server", status=status, description=description)
        # 503: nothing answered the request, so there is no such consumer; 409 says so when it was deleted.
        self._missing = status == "503" or "deleted" in description.lower()
        self._paused_until = time.monotonic() + _RETRY_PAUSE  # asking again at once would only spin
        self._request_over()

    def _warn(self, message: str, **extra: str) -> None:
        # At most one a second: a deleted consumer would otherwise log at the pull rate.
        now = time.monotonic()
        if now - self._last_warning >= 1.0:
            self._last_warning = now
            log.warning(message, extra={"consumer": self._durable, **extra})
