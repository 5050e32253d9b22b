"""Issue 2: events per second through the runtime with a no-op handler, against raw nats-py fetch+ack.

Both consumers read the same number of messages from a fresh, pre-filled stream on the same server in
the same run: (a) raw nats-py, a durable pull consumer, `fetch(batch)` and `ack()` each message; (b) the
castle-bridge `Runtime` with one route whose handler does nothing, so what it adds is the runtime's own
work per message (decoding and validating the event, a CONSUMER span, metrics, the log line, the ack).
The batch of (a) is the route's concurrency of (b); both build the consumer inside the timed region.
Each variant runs `repeats` times, alternating, and the best rate of each counts (noise on a shared
machine only ever slows a run down).

    python -m bench.throughput [--messages N] [--concurrency C] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.common import (
    Result,
    Row,
    add_common_arguments,
    peak_rss_mb,
    private_server,
    report,
    setup_process,
)
from bench.latency_adapters import lab_ip
from contracts.events import VmCreated
from daemon.bus.codec import encode
from daemon.bus.publisher import Publisher
from daemon.bus.runtime import Route, Runtime
from daemon.bus.stream import consumer_config
from daemon.observability import setup_telemetry

TARGET = ">= 0.50"
ACK_WAIT = 30.0
MAX_DELIVER = 5


async def _fill(nc: Client, js: JetStreamContext, messages: int) -> tuple[str, str]:
    """A fresh stream holding `messages` vm.created-shaped events with the headers our publisher sets."""
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"TPUT_{tag}", f"bench.{tag}.vm.created"
    await js.add_stream(name=stream, subjects=[subject])
    for i in range(messages):
        event = VmCreated(name=f"tazlab-k8s-worker-{i}", ip=lab_ip(i % 60000), vmid=1000 + i)
        body, headers = encode(event, subject, msg_id=f"{tag}-{i}", source="bench/throughput")
        await nc.publish(subject, body, headers=headers)
        if i % 1000 == 999:
            await nc.flush()  # keep the client's outgoing buffer bounded
    await nc.flush()
    deadline = time.monotonic() + 60
    while (stored := (await js.stream_info(stream)).state.messages) < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {stream} holds {stored} of {messages} messages after 60s")
        await asyncio.sleep(0.05)
    return stream, subject


def _consumer(durable: str, subject: str, concurrency: int) -> object:
    # The very settings the runtime gives its own consumers (daemon/bus/runtime.py).
    return consumer_config(
        durable,
        subject,
        ack_wait=ACK_WAIT,
        max_deliver=MAX_DELIVER,
        max_ack_pending=max(concurrency * 4, 64),
    )


async def _all_acked(js: JetStreamContext, stream: str, durable: str, messages: int) -> None:
    """Untimed check that the server saw every ack (acks are fire-and-forget on the client)."""
    deadline = time.monotonic() + 30
    while True:
        info = await js.consumer_info(stream, durable)
        if info.ack_floor.stream_seq >= messages and not info.num_ack_pending and not info.num_pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{durable}: ack floor {info.ack_floor.stream_seq} of {messages} after 30s")
        await asyncio.sleep(0.05)


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process) of the timed region


async def time_raw(js: JetStreamContext, stream: str, subject: str, messages: int, batch: int) -> Timing:
    durable = "raw"
    started, cpu = time.perf_counter(), time.process_time()
    await js.add_consumer(stream, _consumer(durable, subject, batch))  # type: ignore[arg-type]
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    done = 0
    while done < messages:
        msgs = await sub.fetch(batch, timeout=5)
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    elapsed = time.perf_counter() - started, time.process_time() - cpu
    await sub.unsubscribe()
    await _all_acked(js, stream, durable, messages)
    return elapsed


async def time_runtime(nc: Client, stream: str, subject: str, messages: int, concurrency: int) -> Timing:
    durable = "runtime"
    js = nc.jetstream()
    handled = 0
    all_handled = asyncio.Event()

    async def noop(event: VmCreated, deps: object) -> None:
        nonlocal handled
        handled += 1
        if handled == messages:
            all_handled.set()

    route = Route(subject, noop, durable, concurrency=concurrency, ack_wait=ACK_WAIT, model=VmCreated)
    runtime = Runtime(nc, Publisher(js, source="bench/throughput"), stream, [route], deps=None)
    started, cpu = time.perf_counter(), time.process_time()
    await runtime.start()
    try:
        await asyncio.wait_for(all_handled.wait(), timeout=max(60.0, messages / 100))
        while runtime.in_flight:  # the last tasks are settling: their acks are being sent
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await runtime.stop(grace=5)
    await _all_acked(js, stream, durable, messages)
    return elapsed


# --telemetry: the row's label suffix and the benchmark's name in bench/run.py.
VARIANTS = {
    "on": ("", "throughput"),
    "off": (" (telemetry off)", "throughput_bare"),
    "traced": (" (spans exported)", "throughput_traced"),
}


class DiscardingExporter(SpanExporter):
    """Takes every batch and drops it: the cost of recording and batching spans, not of a collector."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def run(
    messages: int = 20_000, concurrency: int = 32, repeats: int = 3, *, variant: str = "on"
) -> Result:
    """`variant` only labels the row: what telemetry is installed is decided per process (main)."""
    suffix, name = VARIANTS[variant]
    rates: dict[str, list[float]] = {"raw": [], "runtime": []}
    cpu_us: dict[str, list[float]] = {"raw": [], "runtime": []}
    with private_server() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        try:
            for _ in range(repeats):
                for kind in ("raw", "runtime"):
                    stream, subject = await _fill(nc, js, messages)
                    if kind == "raw":
                        wall, cpu = await time_raw(js, stream, subject, messages, concurrency)
                    else:
                        wall, cpu = await time_runtime(nc, stream, subject, messages, concurrency)
                    rates[kind].append(messages / wall)
                    cpu_us[kind].append(cpu * 1e6 / messages)
                    await js.delete_stream(stream)
        finally:
            await nc.close()
    raw, ours = max(rates["raw"]), max(rates["runtime"])
    row = Row(
        benchmark="runtime throughput vs raw nats-py" + suffix,
        measured=ours,
        reference=raw,
        unit="msg/s",
        ratio=ours / raw,
        target=TARGET,
        note=(
            f"{messages} msgs, batch = concurrency = {concurrency}, best of {repeats}; CPU per message: "
            f"raw {min(cpu_us['raw']):.0f} us, runtime {min(cpu_us['runtime']):.0f} us"
        ),
    )
    details = {
        "messages": messages,
        "concurrency": concurrency,
        "repeats": repeats,
        "raw_rates": [round(r) for r in rates["raw"]],
        "runtime_rates": [round(r) for r in rates["runtime"]],
        "raw_cpu_us_per_msg": [round(c, 1) for c in cpu_us["raw"]],
        "runtime_cpu_us_per_msg": [round(c, 1) for c in cpu_us["runtime"]],
    }
    return Result(name, [row], details, peak_rss_mb())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--messages", type=int, help="messages per variant (20000; 5000 with --quick)")
    parser.add_argument("--concurrency", type=int, default=32, help="route concurrency = raw batch (32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant; the best counts (3)")
    parser.add_argument(
        "--telemetry",
        choices=list(VARIANTS),
        default="on",
        help="on: as `castle-bridge run` with no trace exporter (metrics, an INFO log line per event, spans "
        "made but not recorded); traced: spans recorded and batched to an exporter that drops them; off: no "
        "OpenTelemetry SDK and logs at WARNING, i.e. the runtime's own machinery",
    )
    args = parser.parse_args(argv)
    setup_process(args.log_level if args.telemetry != "off" else "WARNING", telemetry=args.telemetry != "off")
    if args.telemetry == "traced":
        setup_telemetry().add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    messages = args.messages or (5_000 if args.quick else 20_000)
    result = asyncio.run(run(messages, args.concurrency, args.repeats, variant=args.telemetry))
    return report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
