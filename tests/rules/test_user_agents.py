from __future__ import annotations

import pytest

from addons.rules.user_agents import tool_of


@pytest.mark.parametrize(
    "user_agent, tool",
    [
        ("claude-cli/2.0.31 (external, cli)", "Claude Code"),
        ("codex_cli_rs/0.58.0 (Debian 13; x86_64) xterm", "Codex CLI"),
        ("GitHubCopilotChat/0.33.1", "GitHub Copilot"),
        ("Cursor/1.7.2", "Cursor"),
        ("OpenAI/Python 2.8.1", "openai-python"),
        ("Anthropic/Python 0.72.0", "anthropic-python"),
        ("curl/8.14.1", "curl"),
        ("Go-http-client/1.1", "Go"),
        ("SomeNewTool/3.1 (linux)", "SomeNewTool"),
        ("", None),
        (None, None),
        ("  (weird)", None),
    ],
)
def test_tool_of(user_agent, tool):
    assert tool_of(user_agent) == tool
