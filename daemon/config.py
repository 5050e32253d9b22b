"""Configuration: a TOML file plus CASTLE_BRIDGE_* environment variables, validated once at start-up.

Environment variables win over the file. Nesting uses `__` (CASTLE_BRIDGE_NATS__URL). Every secret
can also come from a mounted file (`..._FILE`). A bad setting stops start-up with a message naming
the variable, so an operator never has to read a traceback to find a typo.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from contracts.policy import BridgePolicy, lab_networks
from contracts.types import Tag

ENV_PREFIX = "CASTLE_BRIDGE_"


class ConfigError(Exception):
    """Start-up refusal; the text names every bad setting."""


def _is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _read_secret_file(path: Path | None) -> SecretStr | None:
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return SecretStr(text)


def _existing_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    return path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSettings(_Section):
    url: str | None = Field(default=None, description="NATS URL(s), comma separated; unset = embedded server")
    stream: str = Field(default="CASTLE", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kv_bucket: str = Field(default="castle-bridge-nodes", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    data_dir: Path = Field(
        default=Path(".castle-bridge/nats"), description="Embedded server's JetStream store"
    )
    embedded_port: int = Field(
        default=4222, ge=0, le=65535, description="Embedded server's port on 127.0.0.1 (0 = any free port)"
    )
    stream_replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_seconds: float = Field(default=600.0, gt=0)
    max_age_days: float = Field(default=7.0, gt=0)
    ack_wait_seconds: float = Field(default=30.0, ge=1)
    max_deliver: int = Field(default=5, ge=1, le=1000)
    concurrency: int = Field(default=32, ge=1, le=4096, description="In-flight messages per handler")

    _files = field_validator("creds_file", "tls_ca_file", "tls_cert_file", "tls_key_file")(_existing_file)

    @field_validator("url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for part in value.split(","):
            if urlsplit(part.strip()).scheme not in ("nats", "tls", "ws", "wss"):
                raise ValueError(f"{part.strip()!r} is not a nats://, tls://, ws:// or wss:// URL")
        return value.strip()

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in (self.url or "").split(",") if u.strip()]


class TailscaleSettings(_Section):
    api_url: str = "https://api.tailscale.com"
    tailnet: str = "-"
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_client_secret_file: Path | None = None
    tags: tuple[Tag, ...] = ("tag:tazlab-k8s",)
    key_expiry_seconds: int = Field(default=600, ge=60, le=90 * 86400)
    ephemeral: bool = False
    dns_domain: str | None = Field(default=None, description="MagicDNS domain; default: from the Vault URL")
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "http" and _is_loopback(parts.hostname):
            return value.rstrip("/")  # the simulator on loopback
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL (plain http is accepted only on loopback)")
        return value.rstrip("/")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one tag is required: keys minted by an OAuth client must be tagged")
        return value

    @model_validator(mode="after")
    def _secret_from_file(self) -> TailscaleSettings:
        if self.oauth_client_secret_file is not None:
            if self.oauth_client_secret is not None:
                raise ValueError(
                    f"set {ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET or {ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET_FILE, not both"
                )
            object.__setattr__(self, "oauth_client_secret", _read_secret_file(self.oauth_client_secret_file))
        return self


class TalosSettings(_Section):
    talosctl: str = "talosctl"
    talosconfig: Path | None = None
    lab_subnets: tuple[str, ...] = ("192.168.1.0/24",)
    command_timeout_seconds: float = Field(default=30.0, gt=0)
    ready_deadline_seconds: float = Field(default=900.0, gt=0)
    ready_poll_seconds: float = Field(default=5.0, gt=0)

    _talosconfig = field_validator("talosconfig")(_existing_file)

    @field_validator("lab_subnets")
    @classmethod
    def _subnets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(net) for net in lab_networks(value))


class VaultSettings(_Section):
    url: str = "https://lushycorp-vault.magellanic-gondola.ts.net:8200"
    tailnet_ip: str | None = None
    ca_file: Path | None = None
    step_timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    _ca = field_validator("ca_file")(_existing_file)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL with a host name (Vault is only checked over TLS)")
        return value.rstrip("/")

    @field_validator("tailnet_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 8200  # Vault's own default port


class MeshSettings(_Section):
    socks5_proxy: str | None = Field(default=None, description="socks5://host:port of a userspace tailscaled")
    apid_port: int = Field(default=50000, ge=1, le=65535)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("socks5_proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("socks5", "socks5h") or not parts.hostname or port is None:
            raise ValueError(f"{value!r} is not a socks5://host:port URL")
        return value.strip()


class HttpSettings(_Section):
    listen: str = "127.0.0.1:8780"
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _token_from_file(self) -> HttpSettings:
        if self.webhook_token_file is not None:
            if self.webhook_token is not None:
                raise ValueError(
                    f"set {ENV_PREFIX}HTTP__WEBHOOK_TOKEN or {ENV_PREFIX}HTTP__WEBHOOK_TOKEN_FILE, not both"
                )
            object.__setattr__(self, "webhook_token", _read_secret_file(self.webhook_token_file))
        if self.webhook_token is not None and len(self.webhook_token.get_secret_value()) < 16:
            raise ValueError(
                f"{ENV_PREFIX}HTTP__WEBHOOK_TOKEN(_FILE): the token must be at least 16 characters"
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class BridgeSettings(_Section):
    verify_deadline_seconds: float = Field(default=300.0, gt=0)
    verify_poll_seconds: float = Field(default=5.0, gt=0)
    heal_budget: int = Field(default=1, ge=0)
    heal_window_seconds: float = Field(default=600.0, gt=0)
    claim_seconds: float = Field(default=120.0, gt=0)
    confirm_seconds: float = Field(default=30.0, ge=0)
    audit_concurrency: int = Field(default=16, ge=1, le=1024)


class SchedulerSettings(_Section):
    enabled: bool = True
    vault_interval_seconds: float = Field(default=300.0, ge=1)
    audit_interval_seconds: float = Field(default=900.0, ge=1)


class LogSettings(_Section):
    format: Literal["auto", "json", "text"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    """Everything castle-bridge reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    nats: NatsSettings = NatsSettings()
    tailscale: TailscaleSettings = TailscaleSettings()
    talos: TalosSettings = TalosSettings()
    vault: VaultSettings = VaultSettings()
    mesh: MeshSettings = MeshSettings()
    http: HttpSettings = HttpSettings()
    bridge: BridgeSettings = BridgeSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment over the TOML file (passed as init values): the usual precedence for a daemon
        # whose file ships in an image and whose environment is set per deployment.
        return (env_settings, init_settings)

    @property
    def dns_domain(self) -> str:
        """The MagicDNS domain: configured, else the Vault URL's own (`<label>.<tailnet>.ts.net`)."""
        if self.tailscale.dns_domain:
            return self.tailscale.dns_domain
        host = self.vault.host
        if host.endswith(".ts.net") and host.count(".") >= 3:
            return host.split(".", 1)[1]
        return "ts.net"

    def policy(self) -> BridgePolicy:
        """The subset the handlers need."""
        return BridgePolicy(
            tags=self.tailscale.tags,
            lab_subnets=self.talos.lab_subnets,
            dns_domain=self.dns_domain,
            apid_port=self.mesh.apid_port,
            talos_deadline_seconds=self.talos.ready_deadline_seconds,
            talos_poll_seconds=self.talos.ready_poll_seconds,
            verify_deadline_seconds=self.bridge.verify_deadline_seconds,
            verify_poll_seconds=self.bridge.verify_poll_seconds,
            heal_budget=self.bridge.heal_budget,
            heal_window_seconds=self.bridge.heal_window_seconds,
            claim_seconds=self.bridge.claim_seconds,
            confirm_seconds=self.bridge.confirm_seconds,
            audit_concurrency=self.bridge.audit_concurrency,
        )

    def require_tailscale_credentials(self) -> None:
        """`run` needs OAuth credentials; say exactly which are missing."""
        missing = []
        if not self.tailscale.oauth_client_id:
            missing.append(f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_ID")
        if self.tailscale.oauth_client_secret is None:
            missing.append(
                f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET (or {ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET_FILE)"
            )
        if missing:
            raise ConfigError(
                "Tailscale OAuth credentials are required to run the bridge; missing: " + ", ".join(missing)
            )


def _setting_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    env = ENV_PREFIX + "__".join(p.upper() for p in parts)
    return f"{env} ({'.'.join(parts)})"


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {_setting_name(tuple(err['loc']))}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming what is wrong."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
