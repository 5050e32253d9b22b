"""A SOCKS5 CONNECT server that maps addresses: the simulated castle's userspace tailscaled.

A tailscaled in userspace-networking mode (as in a TazPod) cannot route 100.x addresses for the host;
it offers a SOCKS5 proxy instead and connects on the host's behalf. This server plays that part: for
each CONNECT it asks `route(host, port)` where the simulated tailnet address really lives (a loopback
listener of a simulated node or of the Vault stand-in) and relays bytes both ways. `route` returning
None answers "host unreachable" (0x04), a refused connection answers "connection refused" (0x05),
just as the real proxy reports a node that is not on the tailnet or not listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable

Route = Callable[[str, int], tuple[str, int] | None]

VERSION = 5
NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
TTL_EXPIRED = 0x06
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_RELAY_CHUNK = 64 * 1024


class _Refuse(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Socks5Server:
    """SOCKS5 (RFC 1928) CONNECT only; no auth unless `credentials` (RFC 1929) are given."""

    def __init__(
        self,
        route: Route,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: tuple[str, str] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self._route = route
        self._host = host
        self._port = port
        self._credentials = credentials
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        # What clients asked for, in order, so tests can prove traffic went through the proxy.
        self.requests: list[tuple[str, int]] = []

    @property
    def port(self) -> int:
        """The bound port (still known after stop, for messages)."""
        if self._bound_port is None:
            raise RuntimeError("the SOCKS5 server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        return f"socks5://{self._host}:{self.port}"

    async def start(self) -> Socks5Server:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Socks5Server:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away mid-handshake: nothing to answer
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self._negotiate(reader, writer):
            return
        version, command, _reserved, atyp = await reader.readexactly(4)
        if version != VERSION:
            return
        try:
            host = await _read_address(reader, atyp)
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            if command != CMD_CONNECT:
                raise _Refuse(COMMAND_NOT_SUPPORTED)
            self.requests.append((host, port))
            upstream_reader, upstream_writer = await self._connect(host, port)
        except _Refuse as refusal:
            writer.write(_reply(refusal.code))
            await writer.drain()
            return
        bound = upstream_writer.get_extra_info("sockname") or ("0.0.0.0", 0)
        writer.write(_reply(SUCCEEDED, bound[0], bound[1]))
        await writer.drain()
        try:
            await _relay(reader, writer, upstream_reader, upstream_writer)
        finally:
            upstream_writer.close()
            with contextlib.suppress(Exception):
                await upstream_writer.wait_closed()

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != VERSION:
            return False
        wanted = USERNAME_PASSWORD if self._credentials is not None else NO_AUTH
        if wanted not in methods:
            writer.write(bytes((VERSION, NO_ACCEPTABLE_METHOD)))
            await writer.drain()
            return False
        writer.write(bytes((VERSION, wanted)))
        await writer.drain()
        if self._credentials is None:
            return True
        # RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD; answer VER=1, STATUS (0 = success).
        _sub_version, user_len = await reader.readexactly(2)
        user = (await reader.readexactly(user_len)).decode("utf-8", "replace")
        (password_len,) = await reader.readexactly(1)
        password = (await reader.readexactly(password_len)).decode("utf-8", "replace")
        accepted = (user, password) == self._credentials
        writer.write(bytes((1, 0 if accepted else 1)))
        await writer.drain()
        return accepted

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = self._route(host, port)
        if target is None:
            raise _Refuse(HOST_UNREACHABLE)
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await asyncio.open_connection(*target)
        except ConnectionRefusedError:
            raise _Refuse(CONNECTION_REFUSED) from None
        except TimeoutError:
            raise _Refuse(TTL_EXPIRED) from None
        except OSError:
            raise _Refuse(NETWORK_UNREACHABLE) from None


async def _read_address(reader: asyncio.StreamReader, atyp: int) -> str:
    if atyp == ATYP_IPV4:
        return socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
    if atyp == ATYP_IPV6:
        return socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
    if atyp == ATYP_DOMAIN:
        (length,) = await reader.readexactly(1)
        return (await reader.readexactly(length)).decode("idna")
    raise _Refuse(ADDRESS_TYPE_NOT_SUPPORTED)


def _reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    address = ipaddress.ip_address(host)
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((VERSION, code, 0, atyp)) + address.packed + struct.pack("!H", port)


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await src.read(_RELAY_CHUNK):
                dst.write(chunk)
                await dst.drain()

    tasks = [
        asyncio.create_task(pump(client_reader, upstream_writer)),
        asyncio.create_task(pump(upstream_reader, client_writer)),
    ]
    try:
        # Either side closing ends the session (no half-close): what is already written is still
        # flushed when the caller closes the transports.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
