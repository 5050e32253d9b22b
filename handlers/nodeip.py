"""Whether to add kubelet node-IP narrowing to a node's patch.

Narrowing keeps node identity on the lab subnet while the OS carries tailnet traffic. It is only ever
*added*: changing the node-IP of a kubelet that already runs with another value breaks the CNI, so that
case is reported and left alone.
"""

from __future__ import annotations

from handlers.deps import Deps


async def narrowing_decision(deps: Deps, ip: str) -> tuple[bool, str | None]:
    """(add the narrowing?, a note for the operator when it is deliberately left out)."""
    configured = await deps.talos.node_ip_subnets(ip)
    if configured is not None:
        if set(configured) == set(deps.policy.lab_subnets):
            return False, None
        return (
            False,
            f"kubelet nodeIP.validSubnets is {list(configured)}, not the lab subnets; left unchanged",
        )
    running = await deps.talos.kubelet_node_ips(ip)
    outside = [a for a in running if not deps.policy.in_lab(a)]
    if outside:
        return (
            False,
            f"kubelet already runs with node IP {', '.join(outside)}; not changed (it would break the CNI)",
        )
    return True, None
