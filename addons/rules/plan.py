"""
The one decision about an intercepted request: refused, sent to its original host unchanged,
or routed (provider, model to send, named gateways in failover order). The proxy's router
and `aibridge-proxy explain` both call these functions, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from addons.rules.policy import Decision
from addons.rules.policy import Deny
from addons.rules.policy import Facts
from addons.rules.policy import Origin
from addons.rules.policy import RoutingPolicy


@dataclass(frozen=True)
class Plan:
    decision: Decision | None  # the rule that decided; None: the provider table did
    deny: Deny | None = None  # refused, with this status and message
    provider: str | None = None  # routed to this provider; None: the original host, unchanged
    model: str | None = None  # the model to send instead of the client's
    # named gateways in failover order ("" is the default one); (): the configured target
    gateways: tuple[str, ...] = ()

    @property
    def deny_message(self) -> str:
        assert self.deny is not None and self.decision is not None
        return f"{self.deny.message} (rule {self.decision.rule.name})"


def decide(
    facts: Facts, policy: RoutingPolicy, chosen_profile: str | None
) -> tuple[str | None, Decision | str | None]:
    """(the profile in force, the rule's decision): a chosen profile that does not exist
    gives way to the default one. The decision may be NEEDS_MODEL: read the body, then
    decide again with the model known."""
    profile = policy.profile_in_force(chosen_profile)
    return profile, policy.decide(facts, profile)


def plan(decision: Decision | None, table_provider: str | None, policy: RoutingPolicy) -> Plan:
    """What a decision (or, without one, the provider table's answer) does to the request."""
    if decision is None:
        return Plan(None, provider=table_provider)
    action = decision.rule.action
    if isinstance(action, Deny):
        return Plan(decision, deny=action, provider=table_provider)
    if isinstance(action, Origin):
        return Plan(decision)
    return Plan(
        decision,
        provider=action.provider,
        model=action.model,
        gateways=action.gateways or (policy.default_gateway or "",),
    )
