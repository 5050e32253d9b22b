"""POST /v1/hooks/proxmox through a real HTTP client against the running daemon on a real nats-server.

Every refusal the Proxmox side can meet (401, 400, 413, 415, 503, 403 when disabled) and the promise
behind 202: the event is in the stream, and a retried hook is stored once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from contracts import subjects
from daemon.app import Adapters, Daemon
from daemon.http_api import serve_http
from daemon.natsserver import NatsServer
from tests.busutil import eventually, stream_messages
from tests.daemon_fixtures import WEBHOOK_TOKEN, daemon_settings, running_daemon
from tests.fakes import make_world

HOOK = "/v1/hooks/proxmox"
AUTH = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
NAME = "tazlab-k8s-worker-3"
IP = "192.168.1.23"


@pytest.fixture(scope="module")
async def daemon(nats_server: NatsServer) -> AsyncIterator[Daemon]:
    world = make_world()
    world.talos.add(IP, NAME)  # the chain the hook starts runs to its end against the fakes
    settings = daemon_settings(nats_server.url)
    adapters = Adapters(world.tailnet, world.talos, world.prober)
    async with running_daemon(nats_server, settings, adapters, clock=world.clock) as running:
        yield running


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=daemon.http_url or "", timeout=10) as client:
        yield client


async def stored(daemon: Daemon, subject: str, name: str) -> list[Any]:
    assert daemon.js is not None
    messages = await stream_messages(daemon.js, daemon.settings.nats.stream, subject)
    return [m for m in messages if json.loads(m.data).get("name") == name]


async def test_a_hook_is_stored_once_however_often_it_is_retried(daemon: Daemon, http: httpx.AsyncClient):
    body = {"name": NAME, "ip": IP, "vmid": 123, "role": "worker", "phase": "post-start"}
    headers = {**AUTH, "Idempotency-Key": "pve1:123:post-start:1733230000"}

    first = await http.post(HOOK, json=body, headers=headers)
    retries = [await http.post(HOOK, json=body, headers=headers) for _ in range(2)]

    assert first.status_code == 202, first.text
    answer = first.json()
    assert answer["subject"] == subjects.VM_CREATED and answer["duplicate"] is False
    assert answer["msg_id"] == "hook:vm.created:pve1:123:post-start:1733230000"
    assert [r.status_code for r in retries] == [200, 200]
    assert all(r.json()["duplicate"] and r.json()["msg_id"] == answer["msg_id"] for r in retries)
    messages = await stored(daemon, subjects.VM_CREATED, NAME)
    assert len(messages) == 1
    assert messages[0].headers["Nats-Msg-Id"] == answer["msg_id"]
    assert json.loads(messages[0].data) == {
        "name": NAME,
        "ip": IP,
        "vmid": 123,
        "role": "worker",
        "proxmox_node": None,
        "tags": [],
    }
    # Accepted means handled: the chain it started ran through the bus to the end.
    await eventually(lambda: stored(daemon, subjects.BRIDGE_VERIFIED, NAME), within=20)


async def test_without_an_idempotency_key_the_same_body_is_a_duplicate(
    daemon: Daemon, http: httpx.AsyncClient
):
    body = {"name": "tazlab-k8s-worker-4", "ip": "192.168.1.24", "event": "created"}

    answers = [await http.post(HOOK, json=body, headers=AUTH) for _ in range(2)]

    assert [a.status_code for a in answers] == [202, 200]
    assert answers[0].json()["msg_id"] == answers[1].json()["msg_id"]
    assert len(await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-4")) == 1


async def test_the_same_body_minutes_later_is_a_new_announcement_not_a_duplicate(
    daemon: Daemon, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
):
    # A rebirth re-creates the VM with the same name and IP: without an Idempotency-Key it must still
    # be announced again, not swallowed as a retry of the first birth.
    import daemon.webhook as webhook

    body = {"name": "tazlab-k8s-worker-19", "ip": "192.168.1.119"}
    now = 1_800_000_000.0
    monkeypatch.setattr(webhook, "now", lambda: now)
    first = await http.post(HOOK, json=body, headers=AUTH)
    now += 5 * 60
    reborn = await http.post(HOOK, json=body, headers=AUTH)
    assert [first.status_code, reborn.status_code] == [202, 202]
    assert first.json()["msg_id"] != reborn.json()["msg_id"]
    assert len(await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-19")) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"name": "tazlab-k8s-worker-5", "event": "destroyed", "vmid": 125},
        {"name": "tazlab-k8s-worker-6", "phase": "pre-destroy", "vmid": 126},
    ],
)
async def test_destroyed_by_event_or_hook_phase_publishes_vm_destroyed(
    daemon: Daemon, http: httpx.AsyncClient, body: dict[str, Any]
):
    answer = await http.post(HOOK, json=body, headers=AUTH)

    assert answer.status_code == 202, answer.text
    assert answer.json()["subject"] == subjects.VM_DESTROYED
    [message] = await stored(daemon, subjects.VM_DESTROYED, body["name"])
    assert json.loads(message.data) == {"name": body["name"], "vmid": body["vmid"]}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-the-token-0123456789"},
        {"Authorization": f"Basic {WEBHOOK_TOKEN}"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
async def test_without_the_right_bearer_token_nothing_is_published(
    daemon: Daemon, http: httpx.AsyncClient, headers: dict[str, str]
):
    name = "tazlab-k8s-intruder"

    answer = await http.post(HOOK, json={"name": name, "ip": "192.168.1.66"}, headers=headers)

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in answer.json()["error"]
    assert WEBHOOK_TOKEN not in answer.text
    assert await stored(daemon, subjects.VM_CREATED, name) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"name": "tazlab-k8s-worker-7"}', "ip: Field required"),
        (b'{"name": "Not A Label!", "ip": "192.168.1.27"}', "name: "),
        (b'{"name": "tazlab-k8s-worker-7", "ip": "192.168.1.300"}', "is not an IP address"),
        (b'{"name": "tazlab-k8s-worker-7", "ip": "192.168.1.27", "role": "boss"}', "role: "),
        (b'{"name": "tazlab-k8s-worker-7", "ip": "192.168.1.27", "event": "rebooted"}', "event must be"),
        (b'{"name": "tazlab-k8s-worker-7", "ip": "192.168.1.27", "event": ["created"]}', "event must be"),
        (b'{"name": "tazlab-k8s-worker-7", "ip": "192.168.1.27", "phase": "post-stop"}', "phase"),
        (b'[{"name": "tazlab-k8s-worker-7", "ip": "192.168.1.27"}]', "must be a JSON object"),
        (b'{"name": "tazlab-k8s-worker-7", "ip": ', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
        (b"", "not valid JSON"),
    ],
    ids=[
        "missing-ip",
        "bad-name",
        "bad-ip",
        "bad-role",
        "unknown-event",
        "event-not-a-string",
        "phase-not-acted-on",
        "not-an-object",
        "truncated",
        "not-utf8",
        "deeply-nested",
        "empty",
    ],
)
async def test_an_invalid_body_gets_400_with_the_reason(
    daemon: Daemon, http: httpx.AsyncClient, content: bytes, reason: str
):
    answer = await http.post(
        HOOK, content=content, headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}
    )

    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]
    assert await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-7") == []


async def test_a_bad_idempotency_key_is_refused(daemon: Daemon, http: httpx.AsyncClient):
    body = {"name": "tazlab-k8s-worker-8", "ip": "192.168.1.28"}

    answer = await http.post(HOOK, json=body, headers={**AUTH, "Idempotency-Key": "k" * 201})

    assert answer.status_code == 400 and "Idempotency-Key" in answer.json()["error"]
    assert await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-8") == []


def _padded(name: str, size: int) -> bytes:
    """A valid vm.created body of about `size` bytes (unknown fields are ignored)."""
    head = {"name": name, "ip": "192.168.1.29", "note": ""}
    filler = size - len(json.dumps(head))
    return json.dumps({**head, "note": "x" * filler}).encode()


async def test_a_large_body_within_the_limit_is_read_whole_even_in_small_chunks(
    daemon: Daemon, http: httpx.AsyncClient
):
    limit = daemon.settings.http.max_body_bytes
    body = _padded("tazlab-k8s-worker-9", limit - 100)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    sized = await http.post(HOOK, content=body, headers={**AUTH, "Content-Type": "application/json"})
    streamed = await http.post(HOOK, content=chunks(), headers={**AUTH, "Content-Type": "application/json"})

    assert sized.status_code == 202, sized.text
    assert streamed.status_code == 200 and streamed.json()["duplicate"] is True, streamed.text
    assert len(await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-9")) == 1


async def test_a_body_over_the_limit_gets_413_whether_sized_or_streamed(
    daemon: Daemon, http: httpx.AsyncClient
):
    limit = daemon.settings.http.max_body_bytes
    body = _padded("tazlab-k8s-worker-10", limit + 10)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    sized = await http.post(HOOK, content=body, headers={**AUTH, "Content-Type": "application/json"})
    streamed = await http.post(HOOK, content=chunks(), headers={**AUTH, "Content-Type": "application/json"})

    for answer in (sized, streamed):
        assert answer.status_code == 413, answer.text
        assert f"larger than {limit} bytes" in answer.json()["error"]
    assert await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-10") == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_gets_415(
    daemon: Daemon, http: httpx.AsyncClient, content_type: str | None
):
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type

    answer = await http.post(HOOK, content=b'{"name": "tazlab-k8s-worker-11"}', headers=headers)

    assert answer.status_code == 415
    assert "application/json" in answer.json()["error"]


async def test_while_nats_is_down_the_hook_gets_503_and_nothing_is_stored(tmp_path: Path):
    # A private server: this test stops it under a running daemon.
    server = NatsServer(tmp_path / "nats").start()
    world = make_world()
    settings = daemon_settings(server.url)
    body = {"name": "tazlab-k8s-worker-12", "ip": "192.168.1.32"}
    try:
        async with (
            Daemon(settings, adapters=Adapters(world.tailnet, world.talos, world.prober)) as daemon,
            httpx.AsyncClient(base_url=daemon.http_url or "", timeout=15) as http,
        ):
            server.stop()
            await eventually(lambda: daemon.nc is not None and not daemon.nc.is_connected, within=10)

            refused = await http.post(HOOK, json=body, headers={**AUTH, "Idempotency-Key": "down-1"})

            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "5"
            assert "retry" in refused.json()["error"]

            server.start()  # same port and store: the daemon reconnects by itself
            await eventually(lambda: daemon.nc is not None and daemon.nc.is_connected, within=15)
            retried = await http.post(HOOK, json=body, headers={**AUTH, "Idempotency-Key": "down-1"})

            assert retried.status_code == 202, retried.text
            messages = await stored(daemon, subjects.VM_CREATED, "tazlab-k8s-worker-12")
            assert [m.headers["Nats-Msg-Id"] for m in messages] == ["hook:vm.created:down-1"]
    finally:
        server.stop()


async def test_with_no_token_configured_webhooks_are_refused_with_403(nats_server: NatsServer):
    settings = daemon_settings(nats_server.url, http={"webhook_token": None})
    # Only the HTTP surface: the refusal comes before anything touches the bus.
    stand_in: Any = SimpleNamespace(settings=settings, publisher=None, nc=None, state=None)
    async with (
        serve_http(stand_in) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        answer = await http.post(HOOK, json={"name": NAME, "ip": IP}, headers=AUTH)

    assert answer.status_code == 403
    assert "CASTLE_BRIDGE_HTTP__WEBHOOK_TOKEN" in answer.json()["error"]
