"""A small SOCKS5 CONNECT client (RFC 1928, with RFC 1929 username/password).

Why our own: the daemon may run beside a userspace-networked tailscaled (a TazPod), where 100.x
addresses are reachable only through the SOCKS5 proxy tailscaled exposes. The prober needs a plain
asyncio stream through that proxy so it can time TCP, TLS and HTTP as separate steps; a full HTTP
client with proxy support would blur them. The proxy URL is `socks5://[user:pass@]host:port`
(`socks5h://` lets the proxy resolve names, which is what MagicDNS names need).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from contracts.errors import AuthError, BadResponse, Transient
from contracts.redact import redact

VERSION = 5
NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

REPLY_MESSAGES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Socks5Error(Transient):
    """The proxy could not make the connection; `code` is the RFC 1928 reply code when it sent one."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class ProxyAddress:
    """A parsed socks5:// URL. The password is kept out of repr."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    remote_dns: bool = False

    def __repr__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"ProxyAddress(socks5://{user}{self.host}:{self.port})"

    __str__ = __repr__

    @property
    def display(self) -> str:
        """host:port for messages (never the credentials)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_proxy_url(url: str) -> ProxyAddress:
    """Parse `socks5://[user:pass@]host:port` or `socks5h://...`; ValueError when it is not one."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("socks5", "socks5h") or not parts.hostname or port is None:
        raise ValueError("the proxy must be a socks5://host:port URL")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    for value in (username, password):
        if value is not None and len(value.encode()) > 255:
            raise ValueError("SOCKS5 user names and passwords are at most 255 bytes")
    return ProxyAddress(parts.hostname, port, username, password, remote_dns=parts.scheme == "socks5h")


async def open_connection(proxy: str | ProxyAddress, host: str, port: int) -> Stream:
    """Connect to `host:port` through the proxy and return the relayed stream.

    The caller bounds the time (asyncio.timeout): every step here is a network wait. Raises
    Socks5Error (Transient) for an unreachable proxy or a refusal, AuthError for refused credentials,
    BadResponse when the other side does not speak SOCKS5.
    """
    address = proxy if isinstance(proxy, ProxyAddress) else parse_proxy_url(proxy)
    try:
        reader, writer = await asyncio.open_connection(address.host, address.port)
    except OSError as exc:
        reason = redact(exc.strerror or str(exc))
        raise Socks5Error(f"cannot reach the SOCKS5 proxy {address.display}: {reason}") from None
    try:
        await _authenticate(reader, writer, address)
        await _connect(reader, writer, address, host, port)
    except BaseException as exc:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if isinstance(exc, OSError):
            reason = redact(exc.strerror or str(exc))
            raise Socks5Error(
                f"the SOCKS5 proxy {address.display} dropped the connection: {reason}"
            ) from None
        raise
    return reader, writer


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: ProxyAddress
) -> None:
    methods = [NO_AUTH]
    if proxy.username is not None:
        methods.append(USERNAME_PASSWORD)
    writer.write(bytes((VERSION, len(methods), *methods)))
    await writer.drain()
    version, method = await _read(reader, 2, proxy)
    if version != VERSION:
        raise BadResponse(f"{proxy.display} is not a SOCKS5 proxy (greeting version {version})")
    if method == NO_ACCEPTABLE_METHOD:
        offered = "no authentication or username/password" if proxy.username else "no authentication"
        raise AuthError(
            f"the SOCKS5 proxy {proxy.display} accepts none of the offered methods ({offered}); "
            "put user:password in the proxy URL if it requires them"
        )
    if method == NO_AUTH:
        return
    if method != USERNAME_PASSWORD or proxy.username is None:
        raise BadResponse(
            f"the SOCKS5 proxy {proxy.display} chose method {method:#04x}, which was not offered"
        )
    user = proxy.username.encode()
    password = (proxy.password or "").encode()
    writer.write(bytes((1, len(user))) + user + bytes((len(password),)) + password)
    await writer.drain()
    _sub_version, status = await _read(reader, 2, proxy)
    if status != 0:
        raise AuthError(f"the SOCKS5 proxy {proxy.display} refused the user name and password")


async def _connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: ProxyAddress, host: str, port: int
) -> None:
    writer.write(
        bytes((VERSION, CMD_CONNECT, 0)) + await _encode_address(host, proxy) + struct.pack("!H", port)
    )
    await writer.drain()
    version, code, _reserved, atyp = await _read(reader, 4, proxy)
    if version != VERSION:
        raise BadResponse(f"{proxy.display} answered CONNECT with version {version}, not SOCKS5")
    # Consume the bound address even on failure, so the stream is left in a known state.
    if atyp == ATYP_IPV4:
        await _read(reader, 4 + 2, proxy)
    elif atyp == ATYP_IPV6:
        await _read(reader, 16 + 2, proxy)
    elif atyp == ATYP_DOMAIN:
        (length,) = await _read(reader, 1, proxy)
        await _read(reader, length + 2, proxy)
    elif code == 0:
        raise BadResponse(f"{proxy.display} answered with an unknown address type {atyp:#04x}")
    if code != 0:
        message = REPLY_MESSAGES.get(code, f"unknown reply code {code:#04x}")
        raise Socks5Error(
            f"the SOCKS5 proxy {proxy.display} could not connect to {_display(host, port)}: {message}", code
        )


async def _encode_address(host: str, proxy: ProxyAddress) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None and not proxy.remote_dns:
        # socks5:// means "resolve here" (as curl does); socks5h:// hands the name to the proxy.
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Socks5Error(
                f"cannot resolve {host!r} locally ({exc.strerror or exc}); use a socks5h:// proxy URL "
                "to let the proxy resolve it"
            ) from None
        ip = ipaddress.ip_address(infos[0][4][0])
    if ip is None:
        name = host.encode("idna")
        if len(name) > 255:
            raise ValueError(f"host name {host!r} is too long for SOCKS5")
        return bytes((ATYP_DOMAIN, len(name))) + name
    return bytes((ATYP_IPV4 if ip.version == 4 else ATYP_IPV6,)) + ip.packed


async def _read(reader: asyncio.StreamReader, count: int, proxy: ProxyAddress) -> bytes:
    try:
        return await reader.readexactly(count)
    except asyncio.IncompleteReadError:
        raise Socks5Error(f"the SOCKS5 proxy {proxy.display} closed the connection mid-handshake") from None


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
