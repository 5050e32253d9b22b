"""The tick scheduler: one tick per job per period whatever the number of replicas; clean shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

from contracts import subjects
from daemon.bus.publisher import Publisher
from daemon.scheduler import Job, TickScheduler, period_start
from tests.busutil import eventually, stream_messages
from tests.fakes import FakeClock

JOBS = [
    Job("check-vault", subjects.VAULT_CHECK_TICK, 300),
    Job("audit-bridges", subjects.BRIDGE_AUDIT_TICK, 900),
]


def test_period_start_is_aligned_and_the_same_for_every_moment_of_a_period():
    start = period_start(datetime(2026, 12, 3, 12, 7, 31, tzinfo=UTC), 300)
    assert start == datetime(2026, 12, 3, 12, 5, tzinfo=UTC)
    assert period_start(datetime(2026, 12, 3, 12, 9, 59, tzinfo=UTC), 300) == start
    assert period_start(datetime(2026, 12, 3, 12, 10, tzinfo=UTC), 300) == start + timedelta(minutes=5)


async def test_two_replicas_produce_one_tick_per_period(js, castle_stream):
    clock = FakeClock(datetime(2026, 12, 3, 12, 1, tzinfo=UTC))
    replica_a = TickScheduler(Publisher(js, source="a"), JOBS, clock)
    replica_b = TickScheduler(Publisher(js, source="b"), JOBS, clock)
    outcomes = []
    for _ in range(3):  # three vault periods: both replicas tick each one, at slightly different moments
        outcomes.append(await replica_a.tick("check-vault"))
        clock.current += timedelta(seconds=40)
        outcomes.append(await replica_b.tick("check-vault"))
        clock.current += timedelta(seconds=260)
    assert outcomes == [True, False] * 3
    ticks = [json.loads(m.data) for m in await stream_messages(js, castle_stream, subjects.VAULT_CHECK_TICK)]
    starts = [t["period_start"] for t in ticks]
    assert len(starts) == 3 == len(set(starts))
    assert all(t["job"] == "check-vault" for t in ticks)


async def test_real_schedulers_of_two_replicas_tick_once_per_period(js, castle_stream):
    from daemon.clock import SystemClock

    jobs = [Job("check-vault", subjects.VAULT_CHECK_TICK, 1.0)]
    replicas = [TickScheduler(Publisher(js, source=s), jobs, SystemClock()) for s in ("a", "b")]
    for r in replicas:
        r.start()
    try:

        async def three_periods() -> bool:
            return len(await stream_messages(js, castle_stream, subjects.VAULT_CHECK_TICK)) >= 3

        await eventually(three_periods, within=10, every=0.25)
    finally:
        for r in replicas:
            await r.stop()
    ticks = [
        json.loads(m.data)["period_start"]
        for m in await stream_messages(js, castle_stream, subjects.VAULT_CHECK_TICK)
    ]
    assert len(ticks) == len(set(ticks))  # never two ticks for one period


async def test_stopping_mid_tick_logs_no_traceback(js, castle_stream, caplog):
    class SlowPublisher:
        started = asyncio.Event()

        async def publish(self, *args, **kwargs):
            self.started.set()
            await asyncio.sleep(30)

    scheduler = TickScheduler(SlowPublisher(), JOBS, FakeClock())  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG):
        scheduler.start()
        await asyncio.wait_for(SlowPublisher.started.wait(), 5)
        await scheduler.stop()
        await asyncio.sleep(0.1)
    # Only what the scheduler (or APScheduler, or asyncio on its behalf) says counts: other tests' daemons
    # may still be winding down in the background of this session.
    ours = ("castle_bridge.scheduler", "apscheduler", "asyncio")
    problems = [
        r for r in caplog.records if r.name.startswith(ours) and (r.levelno >= logging.WARNING or r.exc_info)
    ]
    assert problems == []
