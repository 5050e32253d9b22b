"""The one command: run the throughput, rebirth-burst and audit-sweep benchmarks, print one table.

    python bench/run.py [--quick] [--json PATH] [--markdown] [--only throughput,burst,audit_sweep]

Each benchmark runs in a process of its own (`python -m bench.<name>`), so the peak memory reported for
one is not inherited from another. The table has one row per measured ratio: benchmark, measured,
reference (raw nats-py, the ideal, sequential, the memory limit), ratio, target, pass/FAIL. Exit status
0 when every target is met, 1 when one is missed, 2 when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/ on the path, not the project
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - needs the path above
    Result,
    Row,
    describe_environment,
    environment,
    render_markdown,
    render_table,
)

BENCHMARKS = ("throughput", "throughput_traced", "throughput_bare", "burst", "audit_sweep")
# The same throughput benchmark three times, in separate processes: as `castle-bridge run` runs with no
# trace exporter (metrics, an INFO log line per event), with spans recorded and exported, and with
# telemetry off, which isolates the runtime's own machinery.
COMMANDS: dict[str, list[str]] = {
    "throughput": ["bench.throughput"],
    "throughput_traced": ["bench.throughput", "--telemetry", "traced"],
    "throughput_bare": ["bench.throughput", "--telemetry", "off"],
    "burst": ["bench.burst"],
    "audit_sweep": ["bench.audit_sweep"],
}
ROW_NAMES = (
    "runtime throughput vs raw nats-py",
    "runtime throughput vs raw nats-py (spans exported)",
    "runtime throughput vs raw nats-py (telemetry off)",
    "rebirth burst vs ideal",
    "rebirth burst vs sequential",
    "audit sweep vs ideal",
    "audit sweep peak RSS",
)


def all_rows(results: list[Result]) -> list[Row]:
    return [row for result in results for row in result.rows]


def summary(results: list[Result]) -> str:
    """The table, each row's note, and each benchmark's peak memory."""
    lines = [render_table(all_rows(results)), ""]
    lines += [f"  {row.benchmark}: {row.note}" for row in all_rows(results) if row.note]
    memory = ", ".join(f"{r.name} {r.peak_rss_mb:.1f} MB" for r in results)
    lines.append(f"  peak RSS per benchmark process: {memory}")
    return "\n".join(lines)


def _run_one(name: str, quick: bool, log_level: str, workdir: Path) -> Result | None:
    out = workdir / f"{name}.json"
    module, *extra = COMMANDS[name]
    argv = [sys.executable, "-m", module, *extra, "--json", str(out), "--log-level", log_level]
    if quick:
        argv.append("--quick")
    print(f"running {name} ...", flush=True)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if not out.exists():
        print(f"{name} did not produce a result (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return None
    return Result.from_json(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and latencies, for a fast look")
    parser.add_argument("--json", type=Path, help="write every result and the environment to this file")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset to run")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="daemon log level"
    )
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    env = environment()
    print(f"environment: {describe_environment(env)}", flush=True)
    started = datetime.now(UTC)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="castle-bench-run-") as tmp:
        for name in chosen:
            result = _run_one(name, args.quick, args.log_level, Path(tmp))
            if result is not None:
                results.append(result)
    print()
    print(summary(results))
    if args.markdown:
        print()
        print(render_markdown(all_rows(results)))
    if args.json is not None:
        document = {
            "started": started.isoformat(),
            "quick": args.quick,
            "log_level": args.log_level,
            "environment": env,
            "results": [r.to_json() for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if len(results) < len(chosen):
        return 2
    return 0 if all(row.passed for row in all_rows(results)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
