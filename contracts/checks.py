"""The result of one named check: the unit of every verification and reachability report."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CheckResult(BaseModel):
    """One named step of a verification or of the Vault reachability matrix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Step name, e.g. 'tailnet', 'mesh', 'tls', 'http'")
    ok: bool = Field(description="Whether the step passed")
    detail: str = Field(default="", description="What was seen, in words an operator can act on")
    latency_ms: float | None = Field(default=None, description="How long the step took, in milliseconds")
    informational: bool = Field(
        default=False, description="True when the step is reported but does not decide the outcome"
    )


def first_failure(checks: tuple[CheckResult, ...] | list[CheckResult]) -> CheckResult | None:
    """The first deciding check that failed, or None when every deciding check passed."""
    return next((c for c in checks if not c.ok and not c.informational), None)
