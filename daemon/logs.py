"""Structured logs: JSON lines when stderr is not a terminal, readable lines when it is.

Every record passes through `redact` on its way out, a second line of defence behind SecretStr: if an
external tool ever echoes a key back, it still never reaches a log line. Records carry the current
trace id so a log line leads to its trace.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from datetime import datetime
from typing import Any, TextIO

from opentelemetry import trace

from contracts.redact import redact

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# One encoder for every line: `json.dumps(..., default=str)` builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


def _trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Runs once per handled event, so it avoids the costlier generic paths."""

    _second = -1
    _second_text = ""

    def _time(self, created: float) -> str:
        # Same text as datetime.isoformat() in UTC, with the date part formatted once per second.
        second = int(created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1e6):06d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if "trace_id" not in entry and (trace_id := _trace_id()):
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(_ENCODER.encode(entry))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if k != "trace_id")
        line = f"{when} {record.levelname:<7} {record.getMessage()}" + (f"  {extras}" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


FLUSH_DELAY = 0.2  # seconds an INFO line may wait in the buffer


class DeferredFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Warnings and errors are flushed at once; other lines within FLUSH_DELAY, in one write.

    A write to the log per handled event was a tenth of the daemon's work per message (bench/). Order is
    kept (a warning flushes the lines before it), and a clean exit flushes (`logging.shutdown`); what a
    SIGKILL can take is at most FLUSH_DELAY of INFO lines. The flush is scheduled on the running event
    loop; a record logged where no loop runs (start-up, another thread) is flushed at once.
    """

    def __init__(self, stream: TextIO, delay: float = FLUSH_DELAY) -> None:
        super().__init__(stream)
        self._delay = delay
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self._delay, self._flush_deferred)

    def _flush_deferred(self) -> None:
        self._scheduled = False
        self.flush()


def setup_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to `stream` (stderr by default); returns the handler installed."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    if use_json and isinstance(stream, io.TextIOWrapper) and (stream.line_buffering or stream.write_through):
        # stderr writes every line through on its own (always with PYTHONUNBUFFERED, as in the image);
        # the handler decides when to flush instead.
        stream.reconfigure(line_buffering=False, write_through=False)
    handler: logging.Handler = DeferredFlushHandler(stream) if use_json else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_castle_bridge", False):
            root.removeHandler(old)
    handler._castle_bridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # The formatters use neither the caller's file and line nor thread or process names; not collecting
    # them is the logging HOWTO's own optimisation, and it matters at a line per handled event.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Libraries that log every request or job run at INFO: keep them for warnings.
    for noisy in ("apscheduler", "aiohttp.access", "httpx", "httpcore", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
