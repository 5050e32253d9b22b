"""The reachability prober: the Vault matrix and the mesh check, from the daemon's vantage point.

Pods get no MagicDNS, so Vault is checked the way `curl --resolve fqdn:8200:ip https://fqdn:8200/...`
would: dial the tailnet IP (directly, or through the SOCKS5 proxy of a userspace tailscaled) while
presenting the MagicDNS FQDN as TLS SNI and HTTP Host. Each step of the matrix runs separately, on
one connection, under its own timeout, so the report says exactly where it broke and a dead Vault
costs seconds, not minutes. The TLS step always verifies: against the configured CA, or the system
trust store; there is no insecure mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind, Status, StatusCode

from contracts.checks import CheckResult
from contracts.errors import CastleError
from contracts.policy import TAILNET_RANGE
from contracts.reachability import VaultReport
from contracts.redact import redact
from contracts.tailnet import Device
from daemon.adapters import socks5
from daemon.config import ENV_PREFIX, MeshSettings, VaultSettings
from daemon.telemetry import TRACER

T = TypeVar("T")
DevicesFn = Callable[[], Awaitable[list[Device]]]
ResolveFn = Callable[[str], Awaitable[list[str]]]
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]

VAULT_DEFAULT_PORT = 8200
HEALTH_PATH = "/v1/sys/health"
MAX_BODY_BYTES = 64 * 1024

# Vault's /v1/sys/health codes; OpenBao answers the same endpoint with the same codes.
HEALTH_CODES: dict[int, tuple[bool, str]] = {
    200: (True, "active"),
    429: (True, "unsealed standby"),
    473: (True, "performance standby"),
    472: (False, "DR secondary: it does not serve clients; point the URL at the primary cluster"),
    501: (False, "not initialised: run `vault operator init` (or `bao operator init`)"),
    503: (False, "sealed: unseal it (`vault operator unseal` / `bao operator unseal`)"),
}


class _StepFailed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def system_resolve(host: str) -> list[str]:
    """The addresses `host` resolves to from here (empty when it does not resolve)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_magicdns_name(host: str) -> bool:
    """A native MagicDNS FQDN: `<label>.<tailnet>.ts.net`."""
    labels = host.lower().rstrip(".").split(".")
    return len(labels) == 4 and labels[-2:] == ["ts", "net"] and all(labels)


class VaultMeshProber:
    """Implements contracts.reachability.ReachabilityProber."""

    def __init__(
        self,
        vault: VaultSettings,
        mesh: MeshSettings,
        *,
        devices: DevicesFn | None = None,
        resolve: ResolveFn | None = None,
    ) -> None:
        self._vault = vault
        self._mesh = mesh
        self._devices = devices
        self._resolve = resolve or system_resolve
        self._proxy = socks5.parse_proxy_url(mesh.socks5_proxy) if mesh.socks5_proxy else None
        parts = urlsplit(vault.url)
        self.fqdn = (parts.hostname or "").rstrip(".")
        self.port = parts.port or VAULT_DEFAULT_PORT
        host = f"[{self.fqdn}]" if ":" in self.fqdn else self.fqdn
        self.host_header = host if self.port == 443 else f"{host}:{self.port}"

    @property
    def route(self) -> str:
        return f"through the SOCKS5 proxy {self._proxy.display}" if self._proxy else "directly"

    # -- the Vault matrix -------------------------------------------------------------------------

    async def vault(self) -> VaultReport:
        checks: list[CheckResult] = []
        opened: list[Stream] = []
        try:
            await self._matrix(checks, opened)
        finally:
            # Only a connection that carried a full answer is closed politely; a stuck one is aborted.
            answered = any(c.name == "http" and c.ok for c in checks)
            for _reader, writer in opened:
                await _close(writer, graceful=answered)
        return VaultReport(url=self._vault.url, checks=tuple(checks))

    async def _matrix(self, checks: list[CheckResult], opened: list[Stream]) -> None:
        limit = self._vault.step_timeout_seconds
        dns, resolved = await _run_step("dns", limit, self._step_dns, informational=True)
        checks.append(dns)
        ip_check, ip = await _run_step("tailnet_ip", limit, lambda: self._step_tailnet_ip(resolved or []))
        checks.append(ip_check)
        if ip is None:
            checks += _skipped(("tcp", "tls", "http", "contract"), "tailnet_ip")
            return
        tcp, stream = await _run_step("tcp", limit, lambda: self._step_connect(ip, self.port))
        checks.append(tcp)
        if stream is None:
            checks += _skipped(("tls", "http", "contract"), "tcp")
            return
        opened.append(stream)
        tls, upgraded = await _run_step("tls", limit, lambda: self._step_tls(stream))
        checks.append(tls)
        if upgraded is None:
            checks += _skipped(("http", "contract"), "tls")
            return
        http, status = await _run_step("http", limit, lambda: self._step_http(stream))
        checks.append(http)
        if status is None:
            checks += _skipped(("contract",), "http", self._contract_note())
        else:
            checks.append(self._step_contract())

    async def _step_dns(self) -> tuple[str, list[str]]:
        addresses = await self._resolve(self.fqdn)
        if not addresses:
            raise _StepFailed(
                f"{self.fqdn} does not resolve here (informational: pods get no MagicDNS; "
                "the probe dials the tailnet IP and presents the name for SNI and Host)"
            )
        return f"{self.fqdn} resolves to {', '.join(addresses)}", addresses

    async def _step_tailnet_ip(self, resolved: list[str]) -> tuple[str, str]:
        if self._vault.tailnet_ip:
            return f"{self._vault.tailnet_ip} from {ENV_PREFIX}VAULT__TAILNET_IP", self._vault.tailnet_ip
        hint = _resolved_hint(resolved)
        if self._devices is None:
            raise _StepFailed(
                f"no tailnet IP for {self.fqdn}: set {ENV_PREFIX}VAULT__TAILNET_IP, or configure the Tailscale "
                f"OAuth client so the device list can be searched{hint}"
            )
        try:
            devices = await self._devices()
        except Exception as exc:
            raise _StepFailed(
                f"cannot list tailnet devices to find {self.fqdn}: {exc}; "
                f"set {ENV_PREFIX}VAULT__TAILNET_IP to skip the lookup{hint}"
            ) from None
        wanted = self.fqdn.lower()
        device = next((d for d in devices if d.name.lower().rstrip(".") == wanted), None)
        if device is None:
            label = wanted.split(".", 1)[0]
            near = [
                d.name for d in devices if d.hostname.lower() == label or d.magicdns_label.startswith(label)
            ]
            also = f" (similar: {', '.join(near)})" if near else ""
            raise _StepFailed(
                f"no tailnet device has the MagicDNS name {self.fqdn} among {len(devices)} devices{also}: "
                f"check the host in {ENV_PREFIX}VAULT__URL or set {ENV_PREFIX}VAULT__TAILNET_IP{hint}"
            )
        address = device.ipv4 or next(iter(device.addresses), None)
        if address is None:
            raise _StepFailed(f"the tailnet device {device.name} (id {device.id}) has no addresses")
        offline = " (it reports no control connection)" if device.connected_to_control is False else ""
        return f"{address} from the tailnet device {device.name} (id {device.id}){offline}", address

    async def _step_connect(self, host: str, port: int) -> tuple[str, Stream]:
        try:
            stream = await self._open(host, port)
        except OSError as exc:
            raise _StepFailed(_tcp_failure(host, port, exc)) from None
        except CastleError as exc:
            raise _StepFailed(str(exc)) from None
        return f"connected to {_hostport(host, port)} {self.route}", stream

    async def _step_tls(self, stream: Stream) -> tuple[str, Stream]:
        ca = self._vault.ca_file
        trust = f"the CA in {ca}" if ca else "the system trust store"
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise _StepFailed(
                f"cannot load {trust} ({exc}): {ENV_PREFIX}VAULT__CA_FILE must be PEM"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        writer = stream[1]
        try:
            await writer.start_tls(context, server_hostname=self.fqdn)
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
                fix = f"Vault's certificate must name {self.fqdn} in its subjectAltName"
            else:
                fix = f"set {ENV_PREFIX}VAULT__CA_FILE to the CA that issued Vault's certificate"
            raise _StepFailed(
                f"certificate for {self.fqdn} rejected (checked against {trust}): {exc.verify_message}. Fix: {fix}"
            ) from None
        except ssl.SSLError as exc:
            raise _StepFailed(f"TLS handshake with SNI {self.fqdn} failed: {exc.reason or exc}") from None
        except (OSError, EOFError) as exc:
            raise _StepFailed(
                f"the connection closed during the TLS handshake ({type(exc).__name__}): "
                "is Vault serving TLS on this port?"
            ) from None
        ssl_object = writer.get_extra_info("ssl_object")
        return (
            f"{ssl_object.version()} with SNI {self.fqdn}, {_describe_cert(ssl_object)}, verified against {trust}",
            stream,
        )

    async def _step_http(self, stream: Stream) -> tuple[str, int]:
        reader, writer = stream
        request = (
            f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {self.host_header}\r\nUser-Agent: castle-bridge\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(request.encode("ascii"))
            await writer.drain()
            status, body = await _read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            raise _StepFailed(
                f"the connection broke before a full HTTP response ({type(exc).__name__})"
            ) from None
        except ValueError as exc:
            raise _StepFailed(f"not an HTTP/1.1 response: {exc}") from None
        passed, meaning = HEALTH_CODES.get(status, (False, "unexpected status: is this a Vault server?"))
        detail = f"GET {HEALTH_PATH} -> {status} {meaning}; {_health_fields(body)}"
        if not passed:
            raise _StepFailed(detail)
        return detail, status

    def _contract_note(self) -> str:
        if is_magicdns_name(self.fqdn):
            return f"{self.fqdn} is the native MagicDNS name"
        return f"{self.fqdn} is a custom alias, not a native MagicDNS name"

    def _step_contract(self) -> CheckResult:
        native = is_magicdns_name(self.fqdn)
        fix = (
            ""
            if native
            else " (<label>.<tailnet>.ts.net): the architecture converges on the MagicDNS name; point "
            f"{ENV_PREFIX}VAULT__URL at https://<vault device>.<tailnet>.ts.net:{self.port} and issue "
            "Vault's certificate for it"
        )
        return CheckResult(name="contract", ok=native, detail=self._contract_note() + fix, latency_ms=0.0)

    # -- the mesh check ---------------------------------------------------------------------------

    async def mesh(self, address: str, port: int = 50000) -> CheckResult:
        limit = self._mesh.connect_timeout_seconds
        result, stream = await _run_step("mesh", limit, lambda: self._step_connect(address, port))
        if stream is not None:
            await _close(stream[1])
        return result

    async def _open(self, host: str, port: int) -> Stream:
        if self._proxy is not None:
            return await socks5.open_connection(self._proxy, host, port)
        return await asyncio.open_connection(host, port)


async def _run_step(
    name: str,
    limit_seconds: float,
    action: Callable[[], Awaitable[tuple[str, T]]],
    *,
    informational: bool = False,
) -> tuple[CheckResult, T | None]:
    """Run one step under its own timeout (and span); any failure becomes a failed CheckResult."""
    started = time.perf_counter()
    value: T | None = None
    with TRACER.start_as_current_span(f"reachability {name}", kind=SpanKind.CLIENT) as span:
        try:
            async with asyncio.timeout(limit_seconds):
                detail, value = await action()
            ok = True
        except _StepFailed as exc:
            ok, detail = False, exc.detail
        except TimeoutError:
            ok, detail = False, f"no answer within {limit_seconds:g}s{_TIMEOUT_HINTS.get(name, '')}"
        except Exception as exc:
            ok, detail = False, f"unexpected {type(exc).__name__}: {exc}"
        latency = round((time.perf_counter() - started) * 1000, 3)
        result = CheckResult(
            name=name, ok=ok, detail=redact(detail), latency_ms=latency, informational=informational
        )
        span.set_attribute("castle.step", name)
        span.set_attribute("castle.check_ok", ok)
        if not ok and not informational:
            span.set_status(Status(StatusCode.ERROR, result.detail[:300]))
    return result, value


_TIMEOUT_HINTS = {
    "dns": " (informational)",
    "tailnet_ip": f" listing tailnet devices; set {ENV_PREFIX}VAULT__TAILNET_IP to skip the lookup",
    "tcp": (
        ": the host is down or filtered, or this host is not on the tailnet (with a userspace-networked "
        f"tailscaled, set {ENV_PREFIX}MESH__SOCKS5_PROXY)"
    ),
    "mesh": (
        ": the node is down or not on the tailnet, or this host cannot route 100.x (with a "
        f"userspace-networked tailscaled, set {ENV_PREFIX}MESH__SOCKS5_PROXY)"
    ),
    "tls": ": the port accepts TCP but no TLS server answered the handshake",
    "http": ": TLS is up but Vault did not answer the health request",
}


def _skipped(names: tuple[str, ...], failed: str, note: str = "") -> list[CheckResult]:
    suffix = f" ({note})" if note else ""
    return [CheckResult(name=n, ok=False, detail=f"skipped: {failed} failed{suffix}") for n in names]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tcp_failure(host: str, port: int, exc: OSError) -> str:
    target = _hostport(host, port)
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {target}: nothing listens there (service stopped, or wrong port)"
    return f"cannot connect to {target}: {exc.strerror or exc}"


def _resolved_hint(resolved: list[str]) -> str:
    tailnet = [a for a in resolved if ":" not in a and ipaddress.ip_address(a) in TAILNET_RANGE]
    return f" (here the name resolves to {tailnet[0]})" if tailnet else ""


def _describe_cert(ssl_object: ssl.SSLObject) -> str:
    cert: dict[str, Any] = ssl_object.getpeercert() or {}
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    issuer = next((v for rdn in cert.get("issuer", ()) for k, v in rdn if k == "commonName"), "?")
    return f"certificate for {', '.join(names) or '?'} issued by {issuer!r}, valid until {cert.get('notAfter', '?')}"


def _health_fields(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(data, dict):
        return "the body is not Vault's health JSON"

    def show(key: str) -> str:
        value = data.get(key)
        return json.dumps(value) if isinstance(value, bool) else str(value) if value is not None else "?"

    return " ".join(f"{key}={show(key)}" for key in ("sealed", "standby", "version"))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length, chunked, or until close)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ValueError("the response head is too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY_BYTES:
            raise ValueError(f"the body is too large ({length} bytes)")
        body = await reader.readexactly(length)
    else:
        body = b""
        while len(body) <= MAX_BODY_BYTES and (chunk := await reader.read(MAX_BODY_BYTES)):
            body += chunk
    return int(parts[1]), body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise ValueError("the body is too large")
        body += (await reader.readexactly(size + 2))[:-2]


async def _close(writer: asyncio.StreamWriter, *, graceful: bool = True) -> None:
    if not graceful:
        writer.transport.abort()
        return
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
