"""OAuth client credentials for the Tailscale API: the token request and a cache of the access token.

An access token lives an hour; minting one per call would double the traffic and show up in the
tailnet's audit log for nothing, so it is cached until shortly before it expires. The token and the client
secret are `SecretStr` from the response parser on, and nothing here prints them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import SecretStr

from contracts.errors import AuthError
from daemon.config import ENV_PREFIX, TailscaleSettings

TOKEN_PATH = "/api/v2/oauth/token"
REFRESH_MARGIN_SECONDS = 60.0


def credentials_form(settings: TailscaleSettings) -> dict[str, str]:
    """The token request's form fields; AuthError naming the settings when either is missing.

    This is the one place the client secret is revealed: it goes into the request body, nowhere else.
    """
    missing = []
    if not settings.oauth_client_id:
        missing.append(f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_ID")
    if settings.oauth_client_secret is None or not settings.oauth_client_secret.get_secret_value():
        missing.append(f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET (or ..._SECRET_FILE)")
    if missing or settings.oauth_client_secret is None or settings.oauth_client_id is None:
        raise AuthError("Tailscale OAuth client credentials are not configured; set " + " and ".join(missing))
    return {
        "client_id": settings.oauth_client_id,
        "client_secret": settings.oauth_client_secret.get_secret_value(),
        "grant_type": "client_credentials",
    }


class TokenCache:
    """The current access token and when to stop using it, on the caller's monotonic clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._token: SecretStr | None = None
        self._usable_until = 0.0
        # One refresh at a time: concurrent calls after expiry would otherwise each mint a token.
        self.lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TokenCache(cached={self._token is not None})"

    def current(self) -> SecretStr | None:
        if self._token is not None and self._clock() < self._usable_until:
            return self._token
        return None

    def store(self, token: SecretStr, expires_in: float) -> None:
        # Stop 60 s early so a token never expires between the check and the call; a token that lives
        # less than two minutes (never seen in practice) is used for half its life instead.
        margin = min(REFRESH_MARGIN_SECONDS, expires_in / 2)
        self._token = token
        self._usable_until = self._clock() + expires_in - margin

    def drop(self, token: SecretStr | None = None) -> None:
        """Forget the token (only if it is still `token`, when given: another call may have refreshed it)."""
        if token is None or (
            self._token is not None and self._token.get_secret_value() == token.get_secret_value()
        ):
            self._token = None
            self._usable_until = 0.0

    def secrets(self) -> tuple[str, ...]:
        """The cached token's value, for scrubbing error texts (never for printing)."""
        return (self._token.get_secret_value(),) if self._token is not None else ()
