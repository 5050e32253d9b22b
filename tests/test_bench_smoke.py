"""The benchmarks still run: each module at a tiny size, and the one table carries every row.

No timing assertions (the numbers depend on the machine); what is asserted is that every benchmark
produced positive numbers, that the chain and the audit really did their work, and that the table and
its JSON form are whole. Each benchmark starts its own nats-server, as it does when run for real.
"""

from __future__ import annotations

import json

from bench import audit_sweep, burst, run, throughput
from bench.common import Result, render_markdown


def _positive(result: Result) -> None:
    for row in result.rows:
        assert row.measured > 0 and row.reference > 0 and row.ratio > 0, row
    assert result.peak_rss_mb > 0


async def test_each_benchmark_runs_at_a_tiny_size_and_the_table_has_every_row() -> None:
    results = [
        await throughput.run(messages=200, concurrency=16, repeats=1),
        await burst.run(nodes=4, latency=0.002, concurrency=2, sample=1),
        await audit_sweep.run(nodes=20, latency=0.002, audit_concurrency=4),
    ]
    for result in results:
        _positive(result)

    chain = results[1].details
    assert chain["nodes_failed"] == 0 and chain["waves"] == 2
    assert chain["external_calls_per_node"] >= 10  # the whole chain ran, not a shortcut
    audit = results[2].details
    assert audit["calls"]["extension_config"] == 20 and audit["calls"]["list_devices"] == 1
    assert audit["drift_events"] == 0  # a healthy castle: the audit finds nothing to heal

    table = run.summary(results)
    markdown = render_markdown(run.all_rows(results))
    for name in run.ROW_NAMES:
        assert name in table and f"| {name} |" in markdown
    assert [r.benchmark for r in run.all_rows(results)] == list(run.ROW_NAMES)

    again = [Result.from_json(json.loads(json.dumps(r.to_json()))) for r in results]
    assert [r.rows for r in again] == [r.rows for r in results]
