"""The Tailscale API v2 adapter: `TailscaleClient` implements `contracts.tailnet.TailnetAPI` over httpx.

It authenticates with OAuth client credentials (token cached, refreshed once on a 401), mints one
single-use, pre-authorized, tagged AuthKey per node, and lists and deletes tailnet devices. Failures become
the typed errors of `contracts.errors`: 429, 5xx, timeouts and connection errors are retried with jittered
exponential backoff (honouring `Retry-After`) before `Transient`; 400 tag refusals become `TagNotPermitted`.
The key, the access token and the client secret never reach a log line, an exception text or a repr:
error texts pass through `redact` with those values added.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from contracts.errors import (
    AuthError,
    BadResponse,
    CastleError,
    NotFound,
    Permanent,
    TagNotPermitted,
    Transient,
)
from contracts.redact import redact
from contracts.tailnet import AuthKey, Device, KeyInfo
from daemon.adapters.tailscale_oauth import TOKEN_PATH, TokenCache, credentials_form
from daemon.adapters.tailscale_wire import (
    WireError,
    error_message,
    key_description,
    key_request,
    parse_auth_key,
    parse_devices,
    parse_key_info,
    parse_token,
)
from daemon.config import ENV_PREFIX, TailscaleSettings

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
USER_AGENT = "castle-bridge (+https://github.com/tazlab/castle-bridge)"
_CREDENTIALS_HINT = (
    f"check {ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_ID / {ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET and that the "
    "OAuth client has the scopes auth_keys and devices:core"
)
T = TypeVar("T")


class TailscaleClient:
    """The tailnet port over the Tailscale API v2. The httpx client is the caller's: it is never closed here."""

    def __init__(
        self,
        settings: TailscaleSettings,
        http: httpx.AsyncClient,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._sleep = sleep
        self._jitter = jitter
        self._tokens = TokenCache(clock)
        self._tailnet = quote(settings.tailnet, safe="@-._~")

    def __repr__(self) -> str:
        return f"TailscaleClient(api_url={self._settings.api_url!r}, tailnet={self._settings.tailnet!r})"

    __str__ = __repr__

    # -- the port -----------------------------------------------------------------------------------

    async def token_ok(self) -> None:
        """Fetch a fresh access token: proves the OAuth credentials work (used by `doctor`)."""
        await self._token(force=True)

    async def create_auth_key(self, node: str) -> AuthKey:
        s = self._settings
        body = key_request(
            tags=s.tags,
            ephemeral=s.ephemeral,
            expiry_seconds=s.key_expiry_seconds,
            description=key_description(node),
        )
        path = f"/api/v2/tailnet/{self._tailnet}/keys"
        response = await self._call("POST", path, json=body)
        key = self._parse("POST", path, response, lambda b: parse_auth_key(b, fallback_tags=s.tags))
        log.info(
            "minted Tailscale auth key %s for %s (expires %s)", key.key_id, node, key.expires.isoformat()
        )
        return key

    async def revoke_key(self, key_id: str) -> None:
        path = f"/api/v2/tailnet/{self._tailnet}/keys/{quote(key_id, safe='')}"
        if await self._call("DELETE", path, missing_ok=True) is None:
            log.info("Tailscale auth key %s was already gone", key_id)
        else:
            log.info("revoked Tailscale auth key %s", key_id)

    async def get_key(self, key_id: str) -> KeyInfo:
        path = f"/api/v2/tailnet/{self._tailnet}/keys/{quote(key_id, safe='')}"
        return self._parse("GET", path, await self._call("GET", path), parse_key_info)

    async def list_devices(self) -> list[Device]:
        path = f"/api/v2/tailnet/{self._tailnet}/devices"
        response = await self._call("GET", path, params={"fields": "all"})
        return self._parse("GET", path, response, parse_devices)

    async def find_devices(self, hostname: str) -> list[Device]:
        """Devices that are `hostname`'s: by hostname, or by a MagicDNS label of `hostname[-N]` that their
        own hostname does not explain.

        After a collision the control plane names the newcomer `hostname-1`, `-2`, ...; such a copy still
        reports `hostname`. A device whose label is `worker-1` because its own hostname is `worker` (or
        `worker-1`) belongs to that node, never to another one: the reaper deletes what this returns.
        """
        wanted = hostname.strip().lower()
        return [d for d in await self.list_devices() if _belongs_to(d, wanted)]

    async def delete_device(self, device_id: str) -> None:
        path = f"/api/v2/device/{quote(device_id, safe='')}"
        if await self._call("DELETE", path, missing_ok=True) is None:
            log.info("Tailscale device %s was already gone", device_id)
        else:
            log.info("deleted Tailscale device %s", device_id)

    # -- authentication -----------------------------------------------------------------------------

    async def _token(self, *, force: bool = False) -> SecretStr:
        cached = None if force else self._tokens.current()
        if cached is not None:
            return cached
        async with self._tokens.lock:
            cached = None if force else self._tokens.current()  # someone else may have refreshed it
            if cached is not None:
                return cached
            response = await self._send("POST", TOKEN_PATH, data=credentials_form(self._settings))
            if not response.is_success:
                raise self._error("POST", TOKEN_PATH, response, token_request=True)
            token, expires_in = self._parse("POST", TOKEN_PATH, response, parse_token)
            self._tokens.store(token, expires_in)
            log.debug("fetched a Tailscale API access token valid for %.0f s", expires_in)
            return token

    async def _call(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response | None:
        """One authenticated API call; None when `missing_ok` and the API said 404."""
        for refreshed in (False, True):
            token = await self._token()
            response = await self._send(method, path, token=token, **kwargs)
            if response.status_code != 401 or refreshed:
                break
            # Tokens can be revoked or expire early; refresh once, and a second 401 is about credentials.
            log.info("Tailscale API %s %s answered 401; refreshing the access token", method, path)
            self._tokens.drop(token)
        if response.status_code == 404 and missing_ok:
            return None
        if not response.is_success:
            raise self._error(method, path, response)
        return response

    # -- transport and retries ----------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, *, token: SecretStr | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send with retries on 429, 5xx, timeouts and connection errors; any other answer is returned.

        Retrying a key creation after a lost response may mint a second key; the first is single-use,
        expires within minutes and was never seen by anyone, which is cheaper than failing the node.
        """
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        attempts = self._settings.max_attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method,
                    self._settings.api_url + path,
                    headers=headers,
                    timeout=self._settings.request_timeout_seconds,
                    **kwargs,
                )
            except httpx.TimeoutException:
                reason = "timed out"
            except httpx.TransportError as exc:
                reason = f"connection failed ({type(exc).__name__})"
            else:
                log.debug(
                    "Tailscale API %s %s -> %d (attempt %d)", method, path, response.status_code, attempt
                )
                if response.status_code != 429 and response.status_code < 500:
                    return response
                retry_after = _retry_after(response)
                reason = f"HTTP {response.status_code}: {error_message(_json_or_none(response), response.reason_phrase)}"
            delay = self._backoff(attempt, retry_after)
            # A Retry-After beyond the cap is the server asking for minutes: hand it to the bus as the
            # redelivery delay instead of holding the message (and a handler slot) that long.
            if attempt == attempts or (retry_after is not None and retry_after > BACKOFF_CAP_SECONDS):
                text = f"Tailscale API {method} {path}: {reason}; gave up after {attempt} attempt(s)"
                raise Transient(
                    self._scrub(text), retry_after=retry_after if retry_after is not None else delay
                )
            log.warning(
                "Tailscale API %s %s: %s; retry %d/%d in %.2f s",
                method,
                path,
                self._scrub(reason),
                attempt,
                attempts - 1,
                delay,
            )
            await self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
        # "Equal jitter": half the ceiling plus a random half, so replicas spread out but never retry at once.
        delay = ceiling / 2 + ceiling / 2 * self._jitter()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, BACKOFF_CAP_SECONDS)

    # -- answers --------------------------------------------------------------------------------------

    def _parse(self, method: str, path: str, response: httpx.Response | None, parse: Callable[[Any], T]) -> T:
        body = _json_or_none(response) if response is not None else None
        try:
            if body is None:
                raise WireError("a body that is not JSON")
            return parse(body)
        except WireError as exc:
            status = response.status_code if response is not None else "?"
            text = f"Tailscale API {method} {path} answered HTTP {status} with {exc}"
            raise BadResponse(self._scrub(text)) from None

    def _error(
        self, method: str, path: str, response: httpx.Response, *, token_request: bool = False
    ) -> CastleError:
        status = response.status_code
        message = self._scrub(error_message(_json_or_none(response), response.reason_phrase or "no message"))
        where = f"Tailscale API {method} {path}"
        if token_request and status in (400, 401, 403):
            return AuthError(
                f"{where}: the OAuth client credentials were refused (HTTP {status}: {message}); "
                f"{_CREDENTIALS_HINT}"
            )
        lowered = message.lower()
        if status == 400 and "tag" in lowered and ("invalid" in lowered or "not permitted" in lowered):
            return TagNotPermitted(self._settings.tags, message)
        if status in (401, 403):
            return AuthError(f"{where}: HTTP {status}: {message}; {_CREDENTIALS_HINT}")
        if status == 404:
            return NotFound(f"{where}: not found ({message})")
        return Permanent(f"{where} refused the request (HTTP {status}): {message}")

    def _scrub(self, text: str) -> str:
        secret = self._settings.oauth_client_secret
        values = (*self._tokens.secrets(), secret.get_secret_value() if secret is not None else "")
        return redact(text, *values)


def _renamed(label: str, base: str) -> bool:
    """Whether `label` is `base` or a collision rename of it (`base-1`, `base-2`, ...)."""
    return label == base or re.fullmatch(rf"{re.escape(base)}-\d+", label) is not None


def _belongs_to(device: Device, wanted: str) -> bool:
    own, label = device.hostname.strip().lower(), device.magicdns_label.lower()
    if own == wanted:
        return True
    explained_by_own_name = bool(own) and _renamed(label, own)
    return _renamed(label, wanted) and not explained_by_own_name


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(str(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # absent, or an HTTP date (the API documents no rate limit, so seconds it is)
    return max(0.0, value) if value == value else None  # NaN is not a delay
