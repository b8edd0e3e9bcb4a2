"""
Why a request failed, in words a developer can act on, for "my recent requests": from the
status the client got, the proxy's own reason (if it refused), and who answered.
"""

from __future__ import annotations

# The proxy's own refusals (flow metadata `aibridge.reject_reason`).
REASONS: dict[str, tuple[str, str]] = {
    "denied_host": ("the proxy's egress policy denies this host", "ask your administrator"),
    "rule_denied": ("a routing rule denies this request", "ask your administrator"),
    "dot_segments": ("the path holds . or .. segments", "the tool sent a malformed path"),
    "governance_token_mismatch": (
        "the request carries another user's governance token",
        "remove the X-Coder-AI-Governance-Token header from the tool's settings",
    ),
    "model_unreadable": ("a routing rule needs the model, but the body has none",
                         "the tool's request is not JSON with a model"),
    "blocked_port": ("the proxy does not allow this port", "ask your administrator"),
}  # fmt: skip


def failure_hint(
    status: int | None, reason: str | None, routed: bool, error: str | None = None
) -> tuple[str, str] | None:
    """(problem, fix) for a failed request, or None when it did not fail."""
    if reason in REASONS:
        return REASONS[reason]
    if status is None:
        return (f"the connection failed ({error or 'no answer'})", "retry; if it persists, "
                "tell your administrator")  # fmt: skip
    if status < 400:
        return None
    who = "gateway" if routed else "server"
    if routed and status == 401:
        return (
            "gateway answered 401: the token is not valid for AI Bridge",
            "create a new token (coder tokens create) and put it in your proxy settings",
        )
    if routed and status == 403:
        return ("gateway answered 403: AI Bridge does not allow this for you",
                "ask your Coder administrator")  # fmt: skip
    if status == 407:
        return ("the proxy rejected the token", "get a fresh token (coder tokens create)")
    if status == 429:
        return (f"the {who} is rate-limiting you", "wait a little and retry")
    if status == 502:
        return (f"the proxy could not reach the {who}", "retry; if it persists, tell your "
                "administrator")  # fmt: skip
    if status == 504:
        return (f"the {who} did not answer in time", "retry; if it persists, tell your "
                "administrator")  # fmt: skip
    if status >= 500:
        return (f"the {who} failed ({status})", "retry; if it persists, tell your administrator")
    return (f"the {who} answered {status}", "see the tool's own error message")
