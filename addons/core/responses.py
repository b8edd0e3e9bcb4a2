"""The answers the proxy itself gives: short plain text, no HTML, no engine banner, no detail
a client should not see."""

from __future__ import annotations

from http import HTTPStatus

from mitmproxy import http

from addons.rules.provider_errors import api_family
from addons.rules.provider_errors import error_body
from addons.rules.proxy_authorization import REALM


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def plain_response(status: int, text: str, headers: dict[str, str] | None = None) -> http.Response:
    body = f"{status} {reason_phrase(status)}: {text}\n".encode()
    resp = http.Response.make(
        status, body, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    )
    resp.reason = reason_phrase(status)
    return resp


def refusal_response(status: int, text: str, headers: dict[str, str] | None = None):
    """A refusal after which the connection closes: the client learns why, and holds nothing
    open for free (mitmproxy closes after a response that says `Connection: close`)."""
    return plain_response(
        status, text, {"Connection": "close", "Proxy-Connection": "close", **(headers or {})}
    )


def challenge_response(text: str) -> http.Response:
    """407 with the Basic challenge: clients such as Copilot in VS Code only send credentials
    after seeing it, on a new connection."""
    return refusal_response(407, text, {"Proxy-Authenticate": f'Basic realm="{REALM}"'})


def provider_error_response(
    provider: str | None,
    host: str,
    status: int,
    message: str,
    code: str = "policy_denied",
    headers: dict[str, str] | None = None,
) -> http.Response:
    """A refusal the client's SDK shows as an error with our message: in the JSON shape of
    the API it spoke (OpenAI/Copilot, Anthropic or Gemini)."""
    body = error_body(api_family(provider, host), status, message, code)
    resp = http.Response.make(status, body, {"Content-Type": "application/json", **(headers or {})})
    resp.reason = reason_phrase(status)
    return resp
