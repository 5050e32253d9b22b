"""The benchmarks still run: each module at a tiny size, and the one table carries every row; and the
latency adapters keep the castle's rules (single-use keys, `-1` names, appended documents).

No timing assertions (the numbers depend on the machine); what is asserted is that every benchmark
produced positive numbers, that the chain and the audit really did their work, and that the table and
its JSON form are whole. Each benchmark starts its own nats-server, as it does when run for real.
"""

from __future__ import annotations

import json

import pytest

from bench import audit_sweep, burst, run, throughput
from bench.common import DOMAIN, TAGS, Result, render_markdown
from bench.latency_adapters import LatencyCastle, lab_ip
from contracts.errors import Transient
from contracts.talos import BridgePatch
from handlers.render import desired_environment


def _positive(result: Result) -> None:
    for row in result.rows:
        assert row.measured > 0 and row.reference > 0 and row.ratio > 0, row
    assert result.peak_rss_mb > 0


async def test_each_benchmark_runs_at_a_tiny_size_and_the_table_has_every_row() -> None:
    results = [
        await throughput.run(messages=200, concurrency=16, repeats=1),
        await throughput.run(messages=200, concurrency=16, repeats=1, variant="traced"),
        await throughput.run(messages=200, concurrency=16, repeats=1, variant="off"),
        await burst.run(nodes=4, latency=0.002, concurrency=2, sample=1),
        await audit_sweep.run(nodes=20, latency=0.002, audit_concurrency=4),
    ]
    for result in results:
        _positive(result)

    chain = results[3].details
    assert chain["nodes_failed"] == 0 and chain["waves"] == 2
    assert chain["external_calls_per_node"] >= 10  # the whole chain ran, not a shortcut
    audit = results[4].details
    calls = {name: audit["calls"].get(name, 0) for name in ("extension_config", "list_devices")}
    assert calls == {"extension_config": 20, "list_devices": 1}, audit
    assert audit["drift_events"] == 0  # a healthy castle: the audit finds nothing to heal

    table = run.summary(results)
    markdown = render_markdown(run.all_rows(results))
    for name in run.ROW_NAMES:
        assert name in table and f"| {name} |" in markdown
    assert [r.benchmark for r in run.all_rows(results)] == list(run.ROW_NAMES)

    again = [Result.from_json(json.loads(json.dumps(r.to_json()))) for r in results]
    assert [r.rows for r in again] == [r.rows for r in results]


async def test_latency_adapters_behave_like_a_castle_not_like_a_shortcut() -> None:
    castle = LatencyCastle(0.0, domain=DOMAIN, tags=TAGS)
    node = castle.boot("tazlab-k8s-worker-1", lab_ip(0))
    key = await castle.tailnet.create_auth_key(node.name)
    patch = BridgePatch(
        node=node.name,
        talos_version="v1.13.9",
        environment=desired_environment(node.name, TAGS),
        auth_key=key.secret,
        delete_existing=False,
        digest="sha256:0",
    )
    await castle.talos.apply_patch(node.ip, patch)
    first = await castle.tailnet.find_devices(node.name)
    assert [d.name for d in first] == [f"{node.name}.{DOMAIN}"]
    assert (await castle.talos.service(node.ip)).running

    await castle.talos.apply_patch(node.ip, patch.model_copy(update={"delete_existing": True}))
    assert len(await castle.tailnet.find_devices(node.name)) == 1  # a used key joins nothing

    second = await castle.tailnet.create_auth_key(node.name)
    await castle.talos.apply_patch(node.ip, patch.model_copy(update={"auth_key": second.secret}))
    names = sorted(d.name for d in await castle.tailnet.find_devices(node.name))
    assert names == [f"{node.name}-1.{DOMAIN}", f"{node.name}.{DOMAIN}"]  # the name was taken
    config = await castle.talos.extension_config(node.ip)
    assert config is not None  # the third patch did not delete the document first: Talos appended
    assert config.environment.count(f"TS_HOSTNAME={node.name}") == 2

    with pytest.raises(Transient):
        await castle.talos.machine_status("198.18.255.1")
    assert castle.calls["apply_patch"] == 3 and castle.calls["machine_status"] == 1
