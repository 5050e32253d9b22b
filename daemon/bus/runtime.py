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
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import BaseModel

from contracts.events import EVENT_MODELS, DeadLetter
from contracts.redact import redact
from daemon.bus.codec import decode, truncate_payload
from daemon.bus.outcome import Outcome, decide
from daemon.bus.publisher import Publisher
from daemon.bus.pull import PullConsumer, delivery_of
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


@dataclass
class _Bound:
    route: Route
    consumer: PullConsumer | None = None
    heartbeat: asyncio.Task[None] | None = None
    # A fixed pool of workers (one per unit of concurrency) takes delivered messages from the queue: far
    # cheaper than a task per message, and a worker that finds the queue non-empty goes on at once.
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
        nc: Client,
        publisher: Publisher,
        stream: str,
        routes: Sequence[Route],
        deps: Any,
        *,
        pull_expiry: float = 1.0,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._publisher = publisher
        self._stream = stream
        self._routes = list(routes)
        self._deps = deps
        # How long a pull request stays open; also the longest a stop waits for the open ones to end.
        self._pull_expiry = pull_expiry
        self._bound: list[_Bound] = []
        self._stopping = asyncio.Event()
        self._handing_back: set[asyncio.Task[None]] = set()

    @property
    def bound(self) -> bool:
        return bool(self._bound) and not self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self._bound)

    async def start(self) -> None:
        for route in self._routes:
            await self._ensure_consumer(route)
            bound = _Bound(route)
            bound.consumer = PullConsumer(
                self._nc,
                self._stream,
                route.durable,
                functools.partial(self._arrived, bound),
                capacity=route.concurrency,
                expires=self._pull_expiry,
                recreate=functools.partial(self._ensure_consumer, route),
            )
            bound.quiet.set()
            self._bound.append(bound)
        for b in self._bound:
            b.workers = [
                asyncio.create_task(self._worker(b), name=f"worker:{b.route.durable}:{i}")
                for i in range(b.route.concurrency)
            ]
            b.heartbeat = asyncio.create_task(self._heartbeats(b), name=f"heartbeat:{b.route.durable}")
            assert b.consumer is not None
            await b.consumer.start()

    async def _ensure_consumer(self, route: Route) -> None:
        """Create the route's durable consumer, or update it to this configuration (idempotent)."""
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

    async def stop(self, grace: float = 30.0) -> None:
        """Stop pulling, let in-flight work finish within `grace`, then unsubscribe."""
        self._stopping.set()
        # Open pull requests end within their expiry; waiting for that (instead of unsubscribing at once)
        # means nothing is left on its way to a subscription that is going away. Whatever still arrives
        # is handed straight back (`_arrived`).
        await asyncio.gather(*(b.consumer.stop_pulling() for b in self._bound if b.consumer))
        for b in self._bound:
            # Delivered but not started: hand back at once so another replica takes them now.
            while not b.queue.empty():
                await self._hand_back(b, b.queue.get_nowait())
        if self._handing_back:  # the naks of what arrived while the pull requests were ending
            await asyncio.wait(set(self._handing_back), timeout=5)
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
            if b.consumer:
                await b.consumer.close()
        self._bound.clear()

    async def idle(self, within: float = 30.0, settle: float = 0.2) -> None:
        """Wait until every consumer has nothing pending or in flight (tests and `demo` use it)."""
        deadline = time.monotonic() + within
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = self.in_flight > 0
            if not busy:
                for b in self._bound:
                    info = await self._js.consumer_info(self._stream, b.route.durable)
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

    def _arrived(self, b: _Bound, msg: Msg) -> None:
        if self._stopping.is_set():
            # Delivered after SIGTERM: hand it straight back so another replica takes it now.
            task = asyncio.get_running_loop().create_task(self._hand_back(b, msg))
            self._handing_back.add(task)
            task.add_done_callback(self._handing_back.discard)
            return
        b.queue.put_nowait(msg)

    async def _hand_back(self, b: _Bound, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.nak()
        if b.consumer:
            b.consumer.release()

    async def _worker(self, b: _Bound) -> None:
        assert b.consumer is not None
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
                b.consumer.release()
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
        deliveries, sequence = delivery_of(msg)
        headers = msg.headers or {}
        # Started and made current by hand: `start_as_current_span` wraps the same calls in two
        # generator-based context managers, which cost more than the rest of the span when nothing
        # records it (daemon/observability.py).
        span = TRACER.start_span(
            f"{msg.subject} process",
            context=propagate.extract(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": route.durable,
                "messaging.nats.delivery_count": deliveries,
                "messaging.nats.stream_sequence": sequence,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        b.progress[sequence] = (msg, started)
        try:
            node, outcome, settled = await self._handle(route, msg, headers, deliveries, sequence, span)
        except BaseException as exc:  # cancelled mid-handler (shutdown): the message was handed back
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            b.progress.pop(sequence, None)
            otel_context.detach(token)
            span.end()
        duration = time.monotonic() - started
        EVENTS_HANDLED.add(msg.subject, outcome.label)
        HANDLER_SECONDS.record(duration, {"subject": msg.subject, "outcome": outcome.label})
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

    async def _handle(
        self, route: Route, msg: Msg, headers: dict[str, str], deliveries: int, sequence: int, span: Span
    ) -> tuple[str | None, Outcome, bool]:
        """Decode, run the handler, publish its outputs, settle: (node, outcome, whether settled)."""
        node: str | None = None
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
                await self._publish_outputs(route, sequence, result)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(msg.nak(), 1.0)
                raise
            except Exception as exc:
                error = exc
            outcome = decide(error, deliveries, route.max_deliver)
            if error is not None and outcome.label == "error":
                log.error(
                    "handler raised", extra={"subject": msg.subject, "node": node, "error": outcome.reason}
                )
        settled = await self._settle(route, msg, outcome)
        if outcome.action != "ack":
            span.set_status(Status(StatusCode.ERROR, outcome.reason or outcome.label))
        span.set_attribute("castle.outcome", outcome.label)
        return node, outcome, settled

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
