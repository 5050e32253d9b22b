"""The KV state store on a real nats-server: snapshot listing, compare-and-set, clean-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from contracts.errors import Conflict
from contracts.state import NodeState
from daemon.state import SNAPSHOT_BATCH, KvStateStore


def _node(index: int, phase: str = "verified") -> NodeState:
    return NodeState(name=f"tazlab-k8s-node-{index:04d}", ip=f"192.168.1.{index % 200 + 20}", phase=phase)


@pytest.fixture
async def store(js: JetStreamContext, suffix: str) -> AsyncIterator[KvStateStore]:
    bucket = f"state-{suffix}"
    yield await KvStateStore.open(js, bucket)
    await js.delete_key_value(bucket)


async def _consumers(js: JetStreamContext, store: KvStateStore) -> list[str]:
    return [c.name for c in await js.consumers_info(store._stream)]


async def test_an_empty_bucket_lists_nothing_and_leaves_no_consumer(
    js: JetStreamContext, store: KvStateStore
) -> None:
    assert await store.list() == []
    assert await _consumers(js, store) == []


async def test_listing_right_after_writing_sees_every_entry_every_time(
    js: JetStreamContext, store: KvStateStore
) -> None:
    # The regression: nats-py's watch() marker could arrive before the entries, and a sweep saw nothing.
    for round_ in range(25):
        await store.create(_node(round_))
        listed = await store.list()
        assert [s.name for s in listed] == [_node(i).name for i in range(round_ + 1)]
    assert await _consumers(js, store) == []


async def test_a_snapshot_larger_than_one_batch_is_complete_and_holds_only_current_values(
    store: KvStateStore,
) -> None:
    count = SNAPSHOT_BATCH * 2 + 7
    revisions = await asyncio.gather(*(store.create(_node(i, "patching")) for i in range(count)))
    # Newer revisions of some, deletion of others: the listing shows the last value of live keys only.
    await asyncio.gather(*(store.update(_node(i, "verified"), revisions[i]) for i in range(0, count, 3)))
    await asyncio.gather(*(store.delete(_node(i).name) for i in range(1, count, 5)))

    listed = {s.name: s.phase for s in await store.list()}
    expected = {_node(i).name: "verified" if i % 3 == 0 else "patching" for i in range(count) if i % 5 != 1}
    assert listed == expected


async def test_writes_during_a_listing_do_not_stall_or_break_it(store: KvStateStore) -> None:
    await asyncio.gather(*(store.create(_node(i)) for i in range(300)))

    async def writer() -> None:
        for i in range(300, 400):
            await store.create(_node(i))

    listed, _ = await asyncio.wait_for(asyncio.gather(store.list(), writer()), timeout=30)
    names = {s.name for s in listed}
    assert {_node(i).name for i in range(300)} <= names <= {_node(i).name for i in range(400)}
    assert len(await store.list()) == 400


async def test_compare_and_set_refuses_a_stale_revision_and_a_second_create(store: KvStateStore) -> None:
    first = await store.create(_node(1, "patching"))
    with pytest.raises(Conflict, match="already exists"):
        await store.create(_node(1))
    await store.update(_node(1, "verified"), first)
    with pytest.raises(Conflict, match=f"changed since revision {first}"):
        await store.update(_node(1, "failed"), first)
    current = await store.get(_node(1).name)
    assert current is not None and current.state.phase == "verified" and current.state.updated_at is not None


async def test_attach_needs_an_existing_bucket(js: JetStreamContext, suffix: str) -> None:
    with pytest.raises(BucketNotFoundError):
        await KvStateStore.attach(js, f"never-created-{suffix}")
