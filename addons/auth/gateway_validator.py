"""
The token check against the gateway itself (Coder's `GET /api/v2/users/me`): the I/O behind
the pure TokenCache (addons/rules/token_validation.py), which takes any `TokenValidator`.
"""

from __future__ import annotations

import json
import ssl

import aiohttp

from addons.rules.token_validation import TokenVerdict
from addons.rules.token_validation import ValidationUnavailable


class GatewayTokenValidator:
    """Asks `GET <url>` with `<header>: <token>`: 200 = valid, 401/403 = invalid.

    Everything else (refused, timeout, 5xx, 429) is `ValidationUnavailable`: the caller
    decides whether that fails closed (default) or open.
    """

    def __init__(
        self,
        url: str,
        header: str,
        ssl_context: ssl.SSLContext | None,
        timeout: float = 10.0,
    ):
        self.url = url
        self.header = header
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                trust_env=False,  # never through environment proxies
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.ssl_context or True, limit=32),
            )
        return self._session

    async def __call__(self, token: str) -> TokenVerdict:
        try:
            async with self._get_session().get(
                self.url, headers={self.header: token}, allow_redirects=False
            ) as resp:
                if resp.status == 200:
                    body = await resp.read()
                    return TokenVerdict(True, _username_from(body))
                if resp.status in (401, 403):
                    return TokenVerdict(False)
                raise ValidationUnavailable(f"{self.url} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ValidationUnavailable(f"{self.url} unreachable: {type(e).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _username_from(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        name = data.get("username") or data.get("name")
        if isinstance(name, str) and name.isprintable() and len(name) <= 128:
            return name
    return None
