"""
Why a request failed, in words a developer can act on, for "my recent requests": from the
status the client got, the proxy's own reason (if it refused), and who answered.
"""

from __future__ import annotations


def failure_hint(
    status: int | None,
    refusal: tuple[str, str] | None,
    routed: bool,
    error: str | None = None,
) -> tuple[str, str] | None:
    """(problem, fix) for a failed request, or None when it did not fail. `refusal` is what
    the proxy's own refusal says of itself (RejectReason.hint), when it refused."""
    if refusal is not None:
        return refusal
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
