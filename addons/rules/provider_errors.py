"""
A refusal in the shape of the API the client spoke, so the tool shows our message instead of a
parse error: OpenAI and Copilot, Anthropic, Gemini.
"""

from __future__ import annotations

import json

_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED"}  # fmt: skip
_ANTHROPIC_TYPE = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error"}  # fmt: skip


def api_family(provider: str | None, host: str) -> str:
    """openai (also Copilot and most others), anthropic or gemini."""
    name = f"{provider or ''} {host}".lower()
    if "anthropic" in name or "claude" in name:
        return "anthropic"
    if "gemini" in name or "generativelanguage" in name:
        return "gemini"
    return "openai"


def error_body(family: str, status: int, message: str, code: str = "policy_denied") -> bytes:
    if family == "anthropic":
        kind = _ANTHROPIC_TYPE.get(status, "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
    elif family == "gemini":
        state = _GEMINI_STATUS.get(status, "FAILED_PRECONDITION")
        body = {"error": {"code": status, "message": message, "status": state}}
    else:
        kind = {403: "permission_denied", 429: "requests"}.get(status, "invalid_request_error")
        if code == "insufficient_quota":
            kind = code  # OpenAI's own spelling of a spent budget
        body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return json.dumps(body).encode()
