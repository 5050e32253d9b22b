"""The consumer runtime: one durable pull consumer per route, bounded concurrency, heartbeats, outcomes.

A route binds a subject to a handler `async def handle(event, deps) -> event | [events] | None`. Replicas
bind the same durable consumers, so JetStream splits the work between them. A message is acknowledged
only after the handler's output events are stored, so a crash at any point leads to a redelivery, never
to a lost event; output ids derive from the input's stream sequence, so a redelivery's outputs are
de-duplicated by JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from contracts.events import EVENT_MODELS, DeadLetter
from contracts.redact import redact
from daemon.bus.codec import decode, truncate_payload
from daemon.bus.outcome import Outcome, decide
from daemon.bus.publisher import Publisher
from daemon.bus.stream import consumer_config
from daemon.telemetry import DEAD_LETTERS, EVENTS_HANDLED, HANDLER_SECONDS, TRACER

log = logging.getLogger("castle_bridge.runtime")

HandlerResult = BaseModel | Sequence[BaseModel] | None
Handler = Callable[[Any, Any], Awaitable[HandlerResult]]
ParentLookup = Callable[[BaseModel], Awaitable[otel_context.Context | None]]


@dataclass(frozen=True)
class Route:
    """Which handler reacts to which subject, and how patiently."""

    subject: str
    handler: Handler
    durable: str
    concurrency: int = 32
    ack_wait: float = 30.0
    max_deliver: int = 5
    model: type[BaseModel] | None = None
    # For handlers whose outputs belong to other journeys (the audit fans out one drift per node):
    # returns the trace context each output should continue.
    output_parent: ParentLookup | None = None

    @property
    def event_model(self) -> type[BaseModel]:
        return self.model or EVENT_MODELS[self.subject]


class _Slots:
    """A counting semaphore that can hand out several slots at once (one fetch per batch)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._changed = asyncio.Event()

    async def take_some(self, most: int, *, want: int = 1, linger: float = 0.0) -> int:
        """At least one slot; under load, wait up to `linger` for `want` so fetches come in batches.

        Without the linger, a busy consumer would fetch one message per freed slot: one pull request
        per message. The linger is short, so slots held by slow handlers never starve new messages.
        """
        while self.free == 0:
            await self._wait()
        if self.free < want and linger > 0:
            deadline = asyncio.get_running_loop().time() + linger
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while self.free < want:
                        await self._wait()
        n = min(self.free, most)
        self.free -= n
        return n

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def give(self, n: int = 1) -> None:
        self.free += n
        self._changed.set()


@dataclass
class _Bound:
    route: Route
    sub: JetStreamContext.PullSubscription
    slots: _Slots
    fetcher: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None
    # A fixed pool of workers (one per slot) takes fetched messages from the queue: far cheaper than a
    # task per message, and a worker that finds the queue non-empty goes on without yielding.
    queue: asyncio.Queue[Msg] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    processing: int = 0
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is processing
    # In-flight messages and when each last told the server it is still being worked on.
    progress: dict[int, tuple[Msg, float]] = field(default_factory=dict)  # by stream sequence

    @property
    def in_flight(self) -> int:
        return self.queue.qsize() + self.processing


class Runtime:
    """Consumes every route until stopped; `stop()` is the graceful SIGTERM path."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: Publisher,
        stream: str,
        routes: Sequence[Route],
        deps: Any,
        *,
        fetch_timeout: float = 1.0,
        max_batch: int = 256,
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._stream = stream
        self._routes = list(routes)
        self._deps = deps
        self._fetch_timeout = fetch_timeout
        self._max_batch = max_batch
        self._bound: list[_Bound] = []
        self._stopping = asyncio.Event()

    @property
    def bound(self) -> bool:
        return bool(self._bound) and not self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self._bound)

    async def start(self) -> None:
        for route in self._routes:
            await self._js.add_consumer(
                self._stream,
                consumer_config(
                    route.durable,
                    route.subject,
                    ack_wait=route.ack_wait,
                    max_deliver=route.max_deliver,
                    max_ack_pending=max(route.concurrency * 4, 64),
                ),
            )
            sub = await self._js.pull_subscribe_bind(durable=route.durable, stream=self._stream)
            bound = _Bound(route, sub, _Slots(route.concurrency))
            bound.quiet.set()
            self._bound.append(bound)
        for b in self._bound:
            b.workers = [
                asyncio.create_task(self._worker(b), name=f"worker:{b.route.durable}:{i}")
                for i in range(b.route.concurrency)
            ]
            b.fetcher = asyncio.create_task(self._fetch_loop(b), name=f"fetch:{b.route.durable}")
            b.heartbeat = asyncio.create_task(self._heartbeats(b), name=f"heartbeat:{b.route.durable}")

    async def stop(self, grace: float = 30.0) -> None:
        """Stop fetching, let in-flight work finish within `grace`, then unsubscribe."""
        self._stopping.set()
        fetchers = [b.fetcher for b in self._bound if b.fetcher]
        # A pending fetch returns within fetch_timeout; waiting for it (instead of cancelling) means no
        # pull request is left open that could hand messages to a subscription that is going away.
        await asyncio.wait(fetchers, timeout=self._fetch_timeout + 2) if fetchers else None
        for f in fetchers:
            f.cancel()
        for b in self._bound:
            # Fetched but not started: hand back at once so another replica takes them now.
            while not b.queue.empty():
                msg = b.queue.get_nowait()
                b.slots.give()
                with contextlib.suppress(Exception):
                    await msg.nak()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                for b in self._bound:
                    await b.quiet.wait()
        workers = [w for b in self._bound for w in b.workers]
        for w in workers:
            w.cancel()  # idle ones wait on the queue; late ones nak their message as they go
        if workers:
            await asyncio.wait(workers, timeout=5)
        for b in self._bound:
            if b.heartbeat:
                b.heartbeat.cancel()
            with contextlib.suppress(Exception):
                await b.sub.unsubscribe()
        self._bound.clear()

    async def idle(self, within: float = 30.0, settle: float = 0.2) -> None:
        """Wait until every consumer has nothing pending or in flight (tests and `demo` use it)."""
        deadline = time.monotonic() + within
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = self.in_flight > 0
            if not busy:
                for b in self._bound:
                    info = await b.sub.consumer_info()
                    if (info.num_pending or 0) > 0 or (info.num_ack_pending or 0) > 0:
                        busy = True
                        break
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"runtime still busy after {within}s")

    async def _fetch_loop(self, b: _Bound) -> None:
        while not self._stopping.is_set():
            n = await b.slots.take_some(self._max_batch, want=max(1, b.slots.size // 4), linger=0.005)
            try:
                msgs = await b.sub.fetch(n, timeout=self._fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                b.slots.give(n)
                continue
            except asyncio.CancelledError:
                b.slots.give(n)
                raise
            except Exception as exc:  # disconnected, reconnecting, consumer briefly unavailable
                b.slots.give(n)
                log.warning(
                    "fetch failed; retrying", extra={"consumer": b.route.durable, "error": redact(str(exc))}
                )
                await asyncio.sleep(0.5)
                continue
            b.slots.give(n - len(msgs))
            for msg in msgs:
                if self._stopping.is_set():
                    # Fetched after SIGTERM: hand it straight back so another replica takes it now.
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    b.slots.give()
                    continue
                b.queue.put_nowait(msg)

    async def _worker(self, b: _Bound) -> None:
        while True:
            msg = await b.queue.get()
            b.processing += 1
            b.quiet.clear()
            try:
                await self._process(b, msg)
            except Exception:  # _process settles every outcome itself; this is a last resort
                log.exception("message processing failed", extra={"consumer": b.route.durable})
            finally:
                b.processing -= 1
                b.slots.give()
                if b.processing == 0:
                    b.quiet.set()

    async def _heartbeats(self, b: _Bound) -> None:
        """Slow handlers (verification polls for minutes) keep their messages with progress acks.

        One loop per route rather than a task per message: most messages finish long before their first
        heartbeat is due, and a task each would cost more than the handler.
        """
        interval = max(b.route.ack_wait / 3, 0.2)
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for seq, (msg, since) in list(b.progress.items()):
                if now - since >= interval and seq in b.progress:
                    b.progress[seq] = (msg, now)
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _process(self, b: _Bound, msg: Msg) -> None:
        route = b.route
        started = time.monotonic()
        meta = msg.metadata
        deliveries = meta.num_delivered or 1
        headers = dict(msg.headers or {})
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation": "process",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": route.durable,
            "messaging.nats.delivery_count": deliveries,
            "messaging.nats.stream_sequence": meta.sequence.stream,
        }
        node: str | None = None
        with TRACER.start_as_current_span(
            f"{msg.subject} process",
            context=propagate.extract(headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            b.progress[meta.sequence.stream] = (msg, started)
            try:
                if deliveries > route.max_deliver:
                    outcome = Outcome(
                        "term",
                        "exhausted",
                        reason=f"delivered {deliveries} times without finishing (the handler crashed or hung)",
                    )
                else:
                    error: BaseException | None = None
                    try:
                        event = decode(msg.data, headers, route.event_model)
                        node = getattr(event, "name", None)
                        if node:
                            span.set_attribute("castle.node", node)
                        result = await route.handler(event, self._deps)
                        await self._publish_outputs(route, meta.sequence.stream, result)
                    except asyncio.CancelledError:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(msg.nak(), 1.0)
                        raise
                    except Exception as exc:
                        error = exc
                    outcome = decide(error, deliveries, route.max_deliver)
                    if error is not None and outcome.label == "error":
                        log.error(
                            "handler raised",
                            extra={"subject": msg.subject, "node": node, "error": outcome.reason},
                        )
                settled = await self._settle(route, msg, outcome)
            finally:
                b.progress.pop(meta.sequence.stream, None)
            if outcome.action != "ack":
                span.set_status(Status(StatusCode.ERROR, outcome.reason or outcome.label))
            span.set_attribute("castle.outcome", outcome.label)
        duration = time.monotonic() - started
        labels = {"subject": msg.subject, "outcome": outcome.label}
        EVENTS_HANDLED.add(1, labels)
        HANDLER_SECONDS.record(duration, labels)
        log.info(
            "event handled",
            extra={
                "subject": msg.subject,
                "node": node,
                "outcome": outcome.label if settled else f"{outcome.label} (unsettled)",
                "duration_ms": round(duration * 1000, 1),
                "deliveries": deliveries,
                "reason": outcome.reason,
                "trace_id": format(span.get_span_context().trace_id, "032x"),
            },
        )

    async def _publish_outputs(self, route: Route, sequence: int, result: HandlerResult) -> None:
        if result is None:
            return
        outputs = [result] if isinstance(result, BaseModel) else list(result)
        for i, event in enumerate(outputs):
            parent = await route.output_parent(event) if route.output_parent else None
            if parent is not None:
                # Continue the node's journey, linked to the tick that found it.
                link = trace.Link(trace.get_current_span().get_span_context())
                with TRACER.start_as_current_span(
                    f"{route.durable} emit",
                    context=parent,
                    links=[link],
                    attributes={"castle.node": getattr(event, "name", "")},
                ):
                    await self._publisher.publish(event, msg_id=f"{route.durable}:{sequence}:{i}")
            else:
                await self._publisher.publish(event, msg_id=f"{route.durable}:{sequence}:{i}")

    async def _settle(self, route: Route, msg: Msg, outcome: Outcome) -> bool:
        """Apply the outcome; False when the server could not be told (the message will come back)."""
        try:
            if outcome.action == "ack":
                await msg.ack()
            elif outcome.action == "nak":
                await msg.nak(delay=outcome.delay)
            else:
                await self._dead_letter(route, msg, outcome.reason or outcome.label)
                await msg.term()
            return True
        except Exception as exc:
            log.warning(
                "could not settle message; it will be redelivered",
                extra={"subject": msg.subject, "error": redact(str(exc))},
            )
            return False

    async def _dead_letter(self, route: Route, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        letter = DeadLetter(
            subject=msg.subject,
            reason=redact(reason),
            deliveries=meta.num_delivered or 1,
            payload=redact(truncate_payload(msg.data)),
            consumer=route.durable,
            stream_sequence=meta.sequence.stream,
        )
        await self._publisher.publish(letter, msg_id=f"deadletter:{self._stream}:{meta.sequence.stream}")
        DEAD_LETTERS.add(1, {"subject": msg.subject})
