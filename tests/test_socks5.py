"""The SOCKS5 client against the simulated userspace tailscaled (sim.socks5), and the mesh check.

Everything is a real socket on loopback: an echo server stands in for a node's port, the sim proxy
maps fake tailnet addresses to it, and a scripted proxy answers each RFC 1928 reply code.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from contracts.errors import AuthError, BadResponse, Transient
from daemon.adapters import socks5
from daemon.adapters.reachability import VaultMeshProber
from daemon.config import MeshSettings, VaultSettings
from sim.socks5 import Socks5Server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Handler], Awaitable[int]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


async def roundtrip(stream: socks5.Stream, payload: bytes) -> bytes:
    reader, writer = stream
    writer.write(payload)
    await writer.drain()
    received = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return received


async def test_relays_both_ways_to_a_mapped_ipv4_address(serve: Serve) -> None:
    port = await serve(echo)
    payload = bytes(range(256)) * 1024
    async with Socks5Server(lambda host, p: ("127.0.0.1", port) if host == "100.64.1.2" else None) as proxy:
        stream = await socks5.open_connection(proxy.url, "100.64.1.2", 50000)
        assert await roundtrip(stream, payload) == payload
    assert proxy.requests == [("100.64.1.2", 50000)]


async def test_ipv6_and_domain_address_types(serve: Serve) -> None:
    port = await serve(echo)
    async with Socks5Server(lambda host, p: ("127.0.0.1", port)) as proxy:
        assert (
            await roundtrip(await socks5.open_connection(proxy.url, "fd7a:115c:a1e0::1", 8200), b"six")
            == b"six"
        )
        remote = f"socks5h://127.0.0.1:{proxy.port}"
        name = "vault.test-tailnet.ts.net"
        assert await roundtrip(await socks5.open_connection(remote, name, 8200), b"name") == b"name"
        # socks5:// (no h) resolves here, so the proxy only ever sees an address.
        assert await roundtrip(await socks5.open_connection(proxy.url, "localhost", 9), b"local") == b"local"
    assert proxy.requests[:2] == [("fd7a:115c:a1e0::1", 8200), (name, 8200)]
    assert proxy.requests[2][0] in ("127.0.0.1", "::1")


async def test_username_and_password_from_the_url(serve: Serve) -> None:
    port = await serve(echo)
    async with Socks5Server(
        lambda host, p: ("127.0.0.1", port), credentials=("castle", "p@ss:word")
    ) as proxy:
        good = f"socks5://castle:p%40ss%3Aword@127.0.0.1:{proxy.port}"
        assert await roundtrip(await socks5.open_connection(good, "100.64.0.1", 1), b"hi") == b"hi"
        with pytest.raises(AuthError, match="refused the user name and password"):
            await socks5.open_connection(f"socks5://castle:wrong@127.0.0.1:{proxy.port}", "100.64.0.1", 1)
        with pytest.raises(AuthError, match="accepts none of the offered methods"):
            await socks5.open_connection(proxy.url, "100.64.0.1", 1)


async def test_sim_proxy_answers_unreachable_and_refused() -> None:
    port = closed_port()
    route = {"100.64.0.5": ("127.0.0.1", port)}
    async with Socks5Server(lambda host, p: route.get(host)) as proxy:
        with pytest.raises(socks5.Socks5Error, match="host unreachable") as unknown:
            await socks5.open_connection(proxy.url, "100.64.0.4", 50000)
        with pytest.raises(socks5.Socks5Error, match="connection refused") as refused:
            await socks5.open_connection(proxy.url, "100.64.0.5", 50000)
    assert (unknown.value.code, refused.value.code) == (0x04, 0x05)
    assert isinstance(unknown.value, Transient)


async def test_sim_proxy_refuses_other_commands_and_address_types() -> None:
    async with Socks5Server(lambda host, p: None) as proxy:
        answers = []
        for request in (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x01\x00\x09"):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"\x05\x01\x00" + request)
            assert await reader.readexactly(2) == b"\x05\x00"
            answers.append((await reader.readexactly(4))[1])
            writer.close()
    assert answers == [0x07, 0x08]  # BIND: command not supported; type 9: address type not supported


@pytest.mark.parametrize(("code", "message"), sorted(socks5.REPLY_MESSAGES.items()))
async def test_every_reply_code_has_a_clear_error(serve: Serve, code: int, message: str) -> None:
    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        writer.write(b"\x05\x00")
        await reader.readexactly(4 + 4 + 2)
        writer.write(bytes((5, code, 0, 1)) + bytes(4) + struct.pack("!H", 0))
        await writer.drain()
        writer.close()

    port = await serve(scripted)
    with pytest.raises(socks5.Socks5Error) as failed:
        await socks5.open_connection(f"socks5://127.0.0.1:{port}", "100.64.0.7", 50000)
    assert failed.value.code == code
    assert str(failed.value).endswith(f"could not connect to 100.64.0.7:50000: {message}")


async def test_unreachable_proxy_and_a_server_that_is_not_socks5(serve: Serve) -> None:
    async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(16)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    with pytest.raises(socks5.Socks5Error, match=r"cannot reach the SOCKS5 proxy 127\.0\.0\.1:"):
        await socks5.open_connection(f"socks5://127.0.0.1:{closed_port()}", "100.64.0.1", 1)
    port = await serve(http_server)
    with pytest.raises(BadResponse, match="is not a SOCKS5 proxy"):
        await socks5.open_connection(f"socks5://127.0.0.1:{port}", "100.64.0.1", 1)


def test_proxy_url_parsing_keeps_the_password_out_of_sight() -> None:
    proxy = socks5.parse_proxy_url("socks5h://user:s3cret@[::1]:1055")
    assert (proxy.host, proxy.port, proxy.username, proxy.password, proxy.remote_dns) == (
        "::1",
        1055,
        "user",
        "s3cret",
        True,
    )
    assert "s3cret" not in repr(proxy) and "s3cret" not in str(proxy) and proxy.display == "[::1]:1055"
    for bad in ("http://127.0.0.1:1055", "socks5://127.0.0.1", "socks5://:1055", "socks5://h:port"):
        with pytest.raises(ValueError, match="socks5://host:port"):
            socks5.parse_proxy_url(bad)


async def test_stopping_the_proxy_ends_open_relays(serve: Serve) -> None:
    port = await serve(echo)
    proxy = await Socks5Server(lambda host, p: ("127.0.0.1", port)).start()
    reader, writer = await socks5.open_connection(proxy.url, "100.64.0.1", 1)
    async with asyncio.timeout(2):
        await proxy.stop()
        assert await reader.read() == b""
    writer.close()


# -- the mesh check -------------------------------------------------------------------------------


def mesh_prober(**mesh: object) -> VaultMeshProber:
    return VaultMeshProber(VaultSettings(), MeshSettings(**mesh))


async def test_mesh_direct_to_a_listener_passes_and_to_a_closed_port_fails_fast(serve: Serve) -> None:
    port = await serve(echo)
    up = await mesh_prober().mesh("127.0.0.1", port)
    started = time.monotonic()
    down = await mesh_prober().mesh("127.0.0.1", closed_port())

    assert (up.name, up.ok) == ("mesh", True) and up.detail == f"connected to 127.0.0.1:{port} directly"
    assert (down.name, down.ok) == ("mesh", False) and "connection refused" in down.detail
    assert time.monotonic() - started < 1.0


async def test_mesh_through_the_proxy_and_an_unknown_tailnet_address(serve: Serve) -> None:
    port = await serve(echo)
    route = {("100.90.1.2", 50000): ("127.0.0.1", port)}
    async with Socks5Server(lambda host, p: route.get((host, p))) as proxy:
        prober = mesh_prober(socks5_proxy=proxy.url)
        up = await prober.mesh("100.90.1.2")
        unknown = await prober.mesh("100.90.1.3")

    assert up.ok and f"through the SOCKS5 proxy 127.0.0.1:{proxy.port}" in up.detail
    assert not unknown.ok and "host unreachable" in unknown.detail
    assert proxy.requests == [("100.90.1.2", 50000), ("100.90.1.3", 50000)]


async def test_mesh_gives_up_after_the_connect_timeout(serve: Serve) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a proxy that accepts and never answers the greeting

    port = await serve(silent)
    started = time.monotonic()
    result = await mesh_prober(socks5_proxy=f"socks5://127.0.0.1:{port}", connect_timeout_seconds=0.3).mesh(
        "100.90.1.2"
    )

    assert not result.ok and result.detail.startswith("no answer within 0.3s")
    assert "SOCKS5_PROXY" in result.detail
    assert time.monotonic() - started < 1.0
