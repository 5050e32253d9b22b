"""Redaction of secrets in free text (stderr of talosctl, API error bodies, log lines).

This is the second line of defence: secrets travel as `SecretStr` and are revealed only at the one
place that hands them to the external system. Anything that turns text into a log line, an exception
or a span passes through `redact` as well, in case an external tool echoes the secret back.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Tailscale auth keys, OAuth client secrets and API tokens all start with tskey-.
    re.compile(r"tskey-[A-Za-z0-9][A-Za-z0-9_-]*"),
    # The extension environment variable, whatever the value looks like.
    re.compile(r"(?<=TS_AUTHKEY=)[^\s\"',\]}]+"),
    re.compile(r"(?i)(?<=authorization: bearer )[^\s\"']+"),
    re.compile(r"(?i)(?<=\"access_token\": \")[^\"]+"),
    re.compile(r"(?i)(?<=client_secret=)[^&\s]+"),
)


# Substrings at least one of which is present whenever a pattern above can match: most text holds none,
# and a substring test costs far less than five regular-expression scans (every log line comes here).
_MARKERS = ("tskey-", "TS_AUTHKEY=")
_FOLDED_MARKERS = ("bearer ", "access_token", "client_secret=")


def redact(text: str, *secrets: str) -> str:
    """Return `text` with every known secret shape and every given secret value replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if not any(m in text for m in _MARKERS):
        folded = text.lower()
        if not any(m in folded for m in _FOLDED_MARKERS):
            return text
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text
