"""
What is wrong with a developer's set-up, and what to do about it: one wording for
`aibridge-proxy doctor` in a terminal and for the developer page's "check my setup" in a
browser, so both say the same thing about the same fault.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    problem: str
    fix: str


# The proxy's answer to a CONNECT, by status.
CONNECT_VERDICTS: dict[int, Verdict] = {
    407: Verdict(
        "the proxy rejected the token",
        "get a fresh token (coder tokens create) and put it in HTTPS_PROXY",
    ),
    429: Verdict(
        "the proxy is refusing this address after repeated failures",
        "fix the token, then wait a minute",
    ),
    503: Verdict(
        "the proxy cannot check tokens right now (gateway unreachable)",
        "tell the proxy's administrator",
    ),
    403: Verdict(
        "the proxy refused the connection",
        "check with the proxy's administrator (TLS required?)",
    ),
}

NO_TOKEN = Verdict(
    "the proxy credentials carry no token", "use http://coder:<your Coder token>@host:port"
)
BROWSER_UNTRUSTED = Verdict(
    "this browser does not trust the proxy's CA (the check request failed before any answer)",
    "add the CA to this machine's trust store (the steps above), then restart the browser",
)
GATEWAY_REJECTED_TOKEN = Verdict("the gateway rejected the token (401)", "get a fresh Coder token")


def connect_verdict(status: int) -> Verdict:
    return CONNECT_VERDICTS.get(
        status,
        Verdict(f"the proxy answered {status or 'nothing'} to CONNECT", "check the proxy's logs"),
    )
