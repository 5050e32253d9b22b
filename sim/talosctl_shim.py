"""`castle-talosctl-sim`: a talosctl-compatible executable that forwards to the Talos simulator.

It finds the talosconfig the way talosctl does (`--talosconfig`, else $TALOSCONFIG, else
~/.talos/config), reads the simulator URL from the current context (or `--context`), sends argv and,
only when a patch reads `@/dev/stdin`, stdin, then prints what the simulator answers and exits with its
code. It writes nothing to disk. Only the standard library (and PyYAML) is loaded: start-up stays fast.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

STDIN_PATH = "/dev/stdin"
EXEC_PATH = "/sim/talos/v1/exec"


def _flag(argv: list[str], name: str) -> str | None:
    value = None
    for i, token in enumerate(argv):
        if token == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
    return value


def _talosconfig_path(argv: list[str]) -> Path:
    explicit = _flag(argv, "--talosconfig") or os.environ.get("TALOSCONFIG")
    return Path(explicit).expanduser() if explicit else Path.home() / ".talos" / "config"


def _context(argv: list[str]) -> tuple[str, dict[str, Any]]:
    path = _talosconfig_path(argv)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SystemExit(_fail(f'failed to open config file "{path}": {exc.strerror or exc}')) from None
    except yaml.YAMLError:
        raise SystemExit(_fail(f'failed to parse config file "{path}"')) from None
    name = _flag(argv, "--context") or str(config.get("context") or "")
    context = (config.get("contexts") or {}).get(name)
    if not isinstance(context, dict):
        raise SystemExit(_fail(f'context "{name}" is not defined in "{path}"'))
    url = context.get("simulator")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SystemExit(
            _fail(
                f'context "{name}" in "{path}" has no simulator URL: '
                "castle-talosctl-sim talks only to the simulator"
            )
        )
    return url, context


def _reads_stdin(argv: list[str]) -> bool:
    # `-p @/dev/stdin`, `--patch=@/dev/stdin`, `-p@/dev/stdin` or `--patch-file /dev/stdin`.
    return any(STDIN_PATH in token for token in argv)


def _fail(message: str) -> int:
    sys.stderr.write(message + "\n")
    return 1


def main() -> None:
    argv = sys.argv[1:]
    url, context = _context(argv)
    stdin = sys.stdin.buffer.read() if _reads_stdin(argv) else b""
    body = json.dumps(
        {
            "argv": argv,
            "stdin": base64.b64encode(stdin).decode(),
            "endpoints": list(context.get("endpoints") or []),
            "nodes": list(context.get("nodes") or []),
        }
    ).encode()
    del stdin  # it may hold a key; nothing else needs it
    request = urllib.request.Request(  # noqa: S310 (the scheme was checked to be http or https)
        url.rstrip("/") + EXEC_PATH, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    # No proxy: the simulator is local, and a proxy must never see the request body.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=600) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            _fail(f"the Talos simulator refused the request: HTTP {exc.code} {exc.read()[:200]!r}")
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(
            _fail(
                "rpc error: code = Unavailable desc = connection error: desc = "
                f'"transport: Error while dialing: the Talos simulator at {url} is unreachable: {reason}"'
            )
        ) from None
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(int(answer.get("exit_code", 1)))


if __name__ == "__main__":
    main()
