"""What the benchmarks share: result rows with their targets, the environment they ran in, memory
readings, a private nats-server, daemon settings, the printed table and the JSON file."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import operator
import os
import platform
import resource
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.latency_adapters import BENCH_LAB
from daemon.config import Settings, load_settings
from daemon.logs import setup_logging
from daemon.natsserver import NatsServer, nats_server_binary
from daemon.observability import setup_telemetry

DOMAIN = "magellanic-gondola.ts.net"
TAGS = ("tag:tazlab-k8s",)

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured against what, and whether the ratio meets its target."""

    benchmark: str
    measured: float
    reference: float
    unit: str  # of measured and reference: "msg/s", "s" or "MB"
    ratio: float
    target: str  # e.g. ">= 0.50": the ratio compared with a bound
    note: str = ""

    @property
    def passed(self) -> bool:
        op, bound = self.target.split()
        return _COMPARE[op](self.ratio, float(bound))


@dataclass
class Result:
    """What one benchmark module reports."""

    name: str
    rows: list[Row]
    details: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for row, obj in zip(out["rows"], self.rows, strict=True):
            row["passed"] = obj.passed
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        rows = [Row(**{k: v for k, v in r.items() if k != "passed"}) for r in data["rows"]]
        return cls(data["name"], rows, data.get("details", {}), data.get("peak_rss_mb", 0.0))


def rss_mb() -> float:
    """Resident memory of this process now (VmRSS)."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (getrusage; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mb() -> float:
    """Peak resident memory as the kernel's status file reports it (VmHWM)."""
    return _status_kb("VmHWM") / 1024


def _status_kb(key: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return 0.0


def environment() -> dict[str, Any]:
    """What the numbers depend on: the machine, the interpreter, the server and the client library."""
    try:
        server = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        server = f"unknown ({exc})"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "nats_server": server,
        "nats_py": importlib.metadata.version("nats-py"),
        "pydantic": importlib.metadata.version("pydantic"),
    }


def describe_environment(env: dict[str, Any]) -> str:
    return (
        f"{env['cpus']} CPUs ({env['cpus_usable']} usable, load {env['load_avg_1m']}), {env['python']}, "
        f"{env['nats_server']}, nats-py {env['nats_py']}, pydantic {env['pydantic']}, {env['platform']}"
    )


@contextlib.contextmanager
def private_server() -> Iterator[NatsServer]:
    """A nats-server of the benchmark's own on a temporary store, gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="castle-bench-") as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            yield server
        finally:
            server.stop()


def daemon_settings(url: str, *, concurrency: int, audit_concurrency: int = 16) -> Settings:
    """Settings of a benchmark daemon: its own stream and bucket, the bench lab, no scheduler, no HTTP."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        None,
        nats={
            "url": url,
            "stream": f"BENCH_{suffix}",
            "kv_bucket": f"bench-{suffix}",
            "concurrency": concurrency,
        },
        tailscale={"dns_domain": DOMAIN, "tags": list(TAGS)},
        talos={"lab_subnets": [BENCH_LAB]},
        scheduler={"enabled": False},
        bridge={"audit_concurrency": audit_concurrency},
        http={"listen": "127.0.0.1:0"},
    )


def setup_process(log_level: str, *, telemetry: bool = True) -> None:
    """As `castle-bridge run` sets itself up: the telemetry SDK, and JSON logs (to /dev/null here, so the
    cost of formatting each line counts but a terminal's speed does not)."""
    if telemetry:
        setup_telemetry()
    setup_logging(log_level, "json", stream=open(os.devnull, "w"))  # open for the process's lifetime


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="daemon log level (INFO, as deployed, by default); lines go to /dev/null",
    )


def _measure(value: float, unit: str) -> str:
    if unit == "msg/s":
        return f"{value:,.0f} msg/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.2f} s"


def _cells(r: Row) -> tuple[str, ...]:
    measured, reference = _measure(r.measured, r.unit), _measure(r.reference, r.unit)
    return (r.benchmark, measured, reference, f"{r.ratio:.2f}", r.target, "pass" if r.passed else "FAIL")


def render_table(rows: list[Row]) -> str:
    header = ("benchmark", "measured", "reference", "ratio", "target", "result")
    lines = [_cells(r) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def render_markdown(rows: list[Row]) -> str:
    out = [
        "| benchmark | measured | reference | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def report(result: Result, json_path: Path | None) -> int:
    """Print one module's rows and notes; write the JSON; exit status 0 when every target is met."""
    print(render_table(result.rows))
    for row in result.rows:
        if row.note:
            print(f"  {row.benchmark}: {row.note}")
    print(f"  peak RSS of this benchmark's process: {result.peak_rss_mb:.1f} MB")
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    sys.stdout.flush()
    return 0 if all(r.passed for r in result.rows) else 1
