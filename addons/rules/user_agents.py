"""
Which tool sent a request, from its User-Agent: for access lines, the usage report and the
developer page. A name for the tools we know; otherwise the first product token, so unknown
tools still group sensibly.
"""

from __future__ import annotations

import functools
import re

# (pattern, tool name), first match wins. Patterns are searched case-insensitively.
KNOWN_TOOLS: tuple[tuple[str, str], ...] = (
    (r"claude-cli|claude-code", "Claude Code"),
    (r"codex_cli|codex-cli|codex_exec|\bcodex\b", "Codex CLI"),
    (r"copilot-cli|github-copilot-cli", "Copilot CLI"),
    (r"githubcopilot|copilot-intellij|copilot-chat|copilot-language-server|vscode-copilot",
     "GitHub Copilot"),
    (r"\bcursor\b", "Cursor"),
    (r"windsurf", "Windsurf"),
    (r"codeium", "Codeium"),
    (r"\bkiro\b", "Kiro"),
    (r"antigravity", "Antigravity"),
    (r"geminicli|gemini-cli", "Gemini CLI"),
    (r"\bamp\b|ampcode", "Amp"),
    (r"opencode", "OpenCode"),
    (r"jetbrains|intellij|pycharm|goland|webstorm", "JetBrains"),
    (r"tabnine", "Tabnine"),
    (r"openai/python", "openai-python"),
    (r"openai/js", "openai-node"),
    (r"anthropic/python", "anthropic-python"),
    (r"anthropic/js", "anthropic-node"),
    (r"python-httpx", "httpx"),
    (r"python-requests", "requests"),
    (r"^curl/", "curl"),
    (r"go-http-client", "Go"),
    (r"aiohttp", "aiohttp"),
)  # fmt: skip
_KNOWN = tuple((re.compile(p, re.IGNORECASE), name) for p, name in KNOWN_TOOLS)
_PRODUCT = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,40}")


@functools.lru_cache(maxsize=1024)  # a fleet sends few distinct User-Agents, on every request
def tool_of(user_agent: str | None) -> str | None:
    """A short name for the tool behind `user_agent`; None without one."""
    if not user_agent or not user_agent.strip():
        return None
    for pattern, name in _KNOWN:
        if pattern.search(user_agent):
            return name
    m = _PRODUCT.match(user_agent.strip())
    return m.group(0) if m else None
