"""Security: the webhook refuses unauthenticated requests and answers replays without publishing again;
the daemon refuses to start with the OAuth secret or the webhook token on its command line, without
echoing them. Each scenario ends with the leak scan (the fault and bad-input suites end with it too)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects
from daemon import webhook
from tests.busutil import eventually
from tests.castle_fixtures import Castle, LogCapture, simulated_castle
from tests.daemon_fixtures import WEBHOOK_TOKEN
from tests.fault_harness import DAEMON_EXE, DaemonProcess, in_process_leak_scan, process_env

HOOK = "/v1/hooks/proxmox"
AUTH = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
FORGED = "forged-webhook-token-5f2b9c"
PLACES = ("stream", "kv", "logs", "spans", "metrics", "argv")


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _keys_for(castle: Castle, name: str) -> int:
    tailnet = castle.sim.tailnet
    return sum(tailnet.get_key(k)["description"] == f"castle-bridge {name}" for k in castle.bridge_keys())


async def test_the_webhook_refuses_unauthenticated_requests_and_publishes_nothing(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            assert castle.daemon is not None and castle.daemon.http_url
            name = "tazlab-k8s-worker-1"
            body = {"name": name, "ip": castle.born(name)}
            basic = base64.b64encode(f"{WEBHOOK_TOKEN}:".encode()).decode()
            attempts = {
                "no Authorization header": {},
                "a wrong token": {"Authorization": f"Bearer {FORGED}"},
                "the token less its last character": {"Authorization": f"Bearer {WEBHOOK_TOKEN[:-1]}"},
                "the token with a suffix": {"Authorization": f"Bearer {WEBHOOK_TOKEN}x"},
                "a scheme without a token": {"Authorization": "Bearer"},
                "the token over Basic": {"Authorization": f"Basic {basic}"},
                "the token without a scheme": {"Authorization": WEBHOOK_TOKEN},
            }
            async with httpx.AsyncClient(base_url=castle.daemon.http_url) as http:
                for what, headers in attempts.items():
                    answer = await http.post(HOOK, json=body, headers=headers)
                    assert answer.status_code == 401, what
                    assert answer.headers["WWW-Authenticate"] == "Bearer" and answer.json()["error"], what
                    assert WEBHOOK_TOKEN not in answer.text and FORGED not in answer.text, what
                with _quiet("httpx"):  # the test's own client would log the URL it was told to send
                    answer = await http.post(f"{HOOK}?token={WEBHOOK_TOKEN}", json=body)
                assert answer.status_code == 401, "a token in the query string (it lands in access logs)"
                assert await castle.events(subjects.VM_CREATED) == []  # nothing refused was published
                assert (await http.post(HOOK, json=body, headers=AUTH)).status_code == 202  # the control
            assert await castle.wait_outcomes([name]) == {name: "verified"}
            assert len(await castle.events(subjects.VM_CREATED)) == 1
            scan = await in_process_leak_scan(castle, logs.text, span_exporter, extra_secrets=[FORGED])
    scan.assert_clean(*PLACES)


async def test_a_replayed_webhook_is_answered_duplicate_and_publishes_nothing_again(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
):
    clock = [1_800_000_000.0]
    monkeypatch.setattr(webhook, "now", lambda: clock[0])  # one de-duplication window, held still
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            assert castle.daemon is not None and castle.daemon.http_url
            plain, keyed = "tazlab-k8s-worker-1", "tazlab-k8s-worker-2"
            bodies = {n: {"name": n, "ip": castle.born(n), "phase": "post-start"} for n in (plain, keyed)}
            key = {**AUTH, "Idempotency-Key": "rebirth-2026-12-03-worker-2"}
            async with httpx.AsyncClient(base_url=castle.daemon.http_url) as http:

                async def hook(body: dict[str, object], headers: dict[str, str]) -> httpx.Response:
                    return await http.post(
                        HOOK,
                        content=json.dumps(body),
                        headers={**headers, "Content-Type": "application/json"},
                    )

                first = await hook(bodies[plain], AUTH)
                replay = await hook(bodies[plain], AUTH)
                assert (first.status_code, first.json()["duplicate"]) == (202, False)
                assert (replay.status_code, replay.json()["duplicate"]) == (200, True)
                assert replay.json()["stream_sequence"] == first.json()["stream_sequence"]
                assert (await hook(bodies[keyed], key)).status_code == 202
                for again in (
                    bodies[keyed],
                    {**bodies[keyed], "vmid": 999},
                ):  # the key names the announcement
                    answer = await hook(again, key)
                    assert (answer.status_code, answer.json()["duplicate"]) == (200, True)
                assert sorted(e["name"] for e in await castle.events(subjects.VM_CREATED)) == [plain, keyed]
                assert await castle.wait_outcomes([plain, keyed]) == dict.fromkeys((plain, keyed), "verified")

                # Past the window the same body is a new announcement (a VM re-created in a rebirth):
                # published again, and harmless: the bridge in place is verified again, nothing minted.
                clock[0] += webhook.DERIVED_ID_BUCKET_SECONDS
                assert (await hook(bodies[plain], AUTH)).status_code == 202

            async def verified_twice() -> bool:
                names = [e["name"] for e in await castle.events(subjects.BRIDGE_VERIFIED)]
                return names.count(plain) == 2

            await eventually(verified_twice, within=30, every=0.2)
            assert _keys_for(castle, plain) == 1 and _keys_for(castle, keyed) == 1
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean(*PLACES)


async def test_the_daemon_refuses_to_start_with_a_secret_on_its_command_line(nats_server, tmp_path: Path):
    async with simulated_castle(nats_server, tmp_path, start_daemon=False) as castle:
        secret = castle.settings.tailscale.oauth_client_secret
        assert secret is not None
        oauth = secret.get_secret_value()
        env = process_env(castle.settings)  # a complete, valid configuration: only the argument is wrong
        argvs = [
            ["run", "--oauth-client-secret", oauth],
            ["run", f"--oauth-client-secret={oauth}"],
            ["--oauth-client-secret", oauth, "run"],
            ["run", "--client-secret", oauth],
            ["run", "--secret", oauth],
            ["run", "--webhook-token", WEBHOOK_TOKEN],
            ["run", f"--webhook-token={WEBHOOK_TOKEN}"],
            ["--webhook-token", WEBHOOK_TOKEN, "run"],
            ["run", "--token", WEBHOOK_TOKEN],
            ["run", "--OAUTH-CLIENT-SECRET", oauth],
            ["--oauth-client-sec", oauth, "run"],
            ["run", f"--tailscale-oauth-client-secret={oauth}"],
        ]

        async def attempt(argv: list[str]) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                str(DAEMON_EXE),
                *argv,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, (out + err).decode(errors="replace")

        results = await asyncio.gather(*(attempt(a) for a in argvs))
        for argv, (code, output) in zip(argvs, results, strict=True):
            flag = next(a for a in argv if a.startswith("--")).split("=")[0]
            assert code == 2, f"{flag}: exit {code}\n{output}"
            assert f"refusing {flag} on the command line" in output and "CASTLE_BRIDGE_" in output, output
            assert oauth not in output and WEBHOOK_TOKEN not in output, f"{flag}: the secret was echoed"
            assert "castle-bridge running" not in output
        # A bare secret, with no flag naming it, is refused too, and an unknown flag's value is not echoed.
        code, output = await attempt(["run", oauth])
        assert code == 2 and "holds a Tailscale key or secret" in output and oauth not in output
        code, output = await attempt(["run", "--bogus", oauth.removeprefix("tskey-")])
        assert code == 2 and oauth.removeprefix("tskey-") not in output
        # The control: the very same environment starts the daemon when argv carries no secret.
        daemon = DaemonProcess(env, tmp_path / "control.log")
        await daemon.start()
        assert await daemon.stop() == 0
        assert oauth not in daemon.log_text and WEBHOOK_TOKEN not in daemon.log_text
