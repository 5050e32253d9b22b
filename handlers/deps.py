"""What every handler gets: the ports, the clock, the policy and this replica's identity."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.policy import BridgePolicy, Clock
from contracts.reachability import ReachabilityProber
from contracts.state import StateStore
from contracts.tailnet import TailnetAPI
from contracts.talos import TalosNodes


@dataclass(frozen=True)
class Deps:
    tailnet: TailnetAPI
    talos: TalosNodes
    prober: ReachabilityProber
    state: StateStore
    clock: Clock
    policy: BridgePolicy
    replica: str = "castle-bridge"
