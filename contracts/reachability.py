"""The reachability port: the Vault matrix and the mesh check."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from contracts.checks import CheckResult, first_failure

VAULT_STEPS = ("dns", "tailnet_ip", "tcp", "tls", "http", "contract")


class VaultReport(BaseModel):
    """One run of the matrix, every step named."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    checks: tuple[CheckResult, ...] = Field(description="One result per step, in VAULT_STEPS order")

    @property
    def ok(self) -> bool:
        return first_failure(self.checks) is None

    def step(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)


class ReachabilityProber(Protocol):
    """Probes from the daemon's vantage point, directly or through the configured SOCKS5 proxy."""

    async def vault(self) -> VaultReport:
        """Run the Vault matrix once."""
        ...

    async def mesh(self, address: str, port: int = 50000) -> CheckResult:
        """TCP to a tailnet address (apid by default); the result is named 'mesh'."""
        ...
