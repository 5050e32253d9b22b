"""Periodic jobs that only publish a tick; ordinary handlers do the work.

Each tick carries `Nats-Msg-Id = <job>:<period start>`, and the triggers are aligned to period
boundaries, so however many replicas tick, JetStream keeps one tick per job per period (the stream's
duplicate window is kept at least as long as the longest interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from contracts.events import SchedulerTick
from contracts.policy import Clock
from daemon.bus.publisher import Publisher

log = logging.getLogger("castle_bridge.scheduler")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Job:
    name: str
    subject: str
    interval: float  # seconds


def period_start(now: datetime, interval: float) -> datetime:
    """Start of the period `now` falls in; identical on every replica."""
    elapsed = (now - EPOCH).total_seconds()
    return datetime.fromtimestamp(elapsed - elapsed % interval, UTC)


class TickScheduler:
    def __init__(self, publisher: Publisher, jobs: list[Job], clock: Clock) -> None:
        self._publisher = publisher
        self._jobs = {job.name: job for job in jobs}
        self._clock = clock
        self._scheduler: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def tick(self, name: str) -> bool:
        """Publish this period's tick for `name`; False when another replica already did."""
        job = self._jobs[name]
        start = period_start(self._clock.now(), job.interval)
        ack = await self._publisher.publish(
            SchedulerTick(job=name, period_start=start),
            subject=job.subject,
            msg_id=f"{name}:{start.isoformat()}",
        )
        return not getattr(ack, "duplicate", False)

    async def _run(self, name: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self.tick(name)
        except asyncio.CancelledError:
            pass  # shutting down: the next period's tick (on whichever replica) will do
        except Exception as exc:
            log.warning("could not publish scheduler tick", extra={"job": name, "error": str(exc)})
        finally:
            if task is not None:
                self._running.discard(task)

    def start(self, *, run_now: bool = True) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for job in self._jobs.values():
            self._scheduler.add_job(
                self._run,
                IntervalTrigger(
                    seconds=job.interval, start_date=period_start(now, job.interval), timezone=UTC
                ),
                args=[job.name],
                id=job.name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(job.interval / 2)),
                next_run_time=now if run_now else None,
            )
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for task in list(self._running):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._running, return_exceptions=True)
