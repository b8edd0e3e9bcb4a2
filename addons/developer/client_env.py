"""
`aibridge-proxy env`: exactly what a developer sets, per shell and per runtime.

The rule that matters: variables that *add* a CA (`NODE_EXTRA_CA_CERTS`,
`CODEX_CA_CERTIFICATE`) get our CA alone; variables that *replace* the trust store
(`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`) get a bundle of the system roots plus
our CA, or every other HTTPS site stops working for that tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SHELLS = ("bash", "fish", "powershell")
NO_PROXY = "localhost,127.0.0.1,::1"


@dataclass(frozen=True)
class ClientEnv:
    proxy_url: str
    ca: Path
    bundle: Path
    no_proxy: str = NO_PROXY

    def groups(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """(comment, [(variable, value)]) in the order a reader needs them."""
        return [
            (
                "The proxy, with your Coder token as the password (upper and lower case: tools differ)",
                [
                    ("HTTPS_PROXY", self.proxy_url),
                    ("https_proxy", self.proxy_url),
                    ("HTTP_PROXY", self.proxy_url),
                    ("http_proxy", self.proxy_url),
                ],
            ),
            (
                "Keep loopback direct: some agents talk to their own local daemon",
                [
                    ("NO_PROXY", self.no_proxy),
                    ("no_proxy", self.no_proxy),
                ],
            ),
            (
                "Node (Claude Code, Copilot CLI, OpenCode, openai npm): ADDS our CA to Node's roots",
                [
                    ("NODE_EXTRA_CA_CERTS", str(self.ca)),
                ],
            ),
            (
                "Node's built-in fetch() ignores HTTPS_PROXY without this (Node >= 22.21 / 24.5)",
                [
                    ("NODE_USE_ENV_PROXY", "1"),
                ],
            ),
            (
                "Codex CLI: ADDS our CA (and wins over SSL_CERT_FILE)",
                [
                    ("CODEX_CA_CERTIFICATE", str(self.ca)),
                ],
            ),
            (
                "OpenSSL tools, Python, Go, curl, requests: these REPLACE the trust store, so they get "
                "the bundle (system roots + our CA)",
                [
                    ("SSL_CERT_FILE", str(self.bundle)),
                    ("REQUESTS_CA_BUNDLE", str(self.bundle)),
                    ("CURL_CA_BUNDLE", str(self.bundle)),
                ],
            ),
        ]


@dataclass(frozen=True)
class ToolSetup:
    """What one tool needs: which of the variables above, and what else (IDE settings)."""

    id: str
    name: str
    variables: tuple[str, ...]
    note: str = ""
    ide: str | None = None  # "vscode" or "jetbrains": settings instead of variables


_PROXY = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
# Copilot's language server ignores an https:// proxy URL's scheme: it sends its CONNECT (and
# the token in Proxy-Authorization) in plain text, which a TLS listener refuses.
_COPILOT_HTTP = ("Use an http:// proxy URL: Copilot's language server ignores https:// and "
                 "speaks plain HTTP to the proxy, so a TLS listener refuses it.")  # fmt: skip
TOOLS: tuple[ToolSetup, ...] = (
    ToolSetup("copilot-vscode", "GitHub Copilot in VS Code", (),
              "VS Code takes its proxy from settings.json and its CAs from the OS trust store "
              "only (NODE_EXTRA_CA_CERTS is ignored): trust the CA in the OS first. " + _COPILOT_HTTP,
              ide="vscode"),
    ToolSetup("copilot-jetbrains", "GitHub Copilot in JetBrains IDEs", (),
              "JetBrains IDEs take the proxy from their own settings; trust the CA in the OS "
              "(or the IDE's Server Certificates). " + _COPILOT_HTTP, ide="jetbrains"),
    ToolSetup("copilot-cli", "Copilot CLI", (*_PROXY, "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY")),
    ToolSetup("claude-code", "Claude Code", (*_PROXY, "NODE_EXTRA_CA_CERTS")),
    ToolSetup("codex", "Codex CLI", (*_PROXY, "CODEX_CA_CERTIFICATE")),
    ToolSetup("opencode", "OpenCode", (*_PROXY, "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY")),
    ToolSetup("python", "Python (openai, anthropic, requests, httpx)",
              (*_PROXY, "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")),
    ToolSetup("node", "Node (openai and anthropic npm, fetch)",
              (*_PROXY, "NODE_EXTRA_CA_CERTS", "NODE_USE_ENV_PROXY")),
    ToolSetup("go", "Go", (*_PROXY, "SSL_CERT_FILE")),
    ToolSetup("curl", "curl", (*_PROXY, "CURL_CA_BUNDLE")),
)  # fmt: skip
TOOLS_BY_ID = {t.id: t for t in TOOLS}


def _quote_sh(value: str) -> str:
    # Keep $VARIABLES expandable (e.g. the token), quote everything else.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def _quote_ps(value: str) -> str:
    return '"' + value.replace("`", "``").replace('"', '`"') + '"'


def assignment(shell: str, name: str, value: str) -> str:
    """One variable set for the rest of the session, in `shell`'s syntax."""
    if shell == "bash":
        return f"export {name}={_quote_sh(value)}"
    if shell == "fish":
        return f"set -gx {name} {_quote_sh(value)}"
    # $CODER_SESSION_TOKEN -> $env:CODER_SESSION_TOKEN
    return f"$env:{name} = {_quote_ps(value.replace('$', '$env:'))}"


def render(env: ClientEnv, shell: str) -> str:
    lines = [f"# aibridge-proxy client settings ({'bash/zsh' if shell == 'bash' else shell})"]
    for comment, pairs in env.groups():
        lines.append(f"# {comment}")
        lines += [assignment(shell, name, value) for name, value in pairs]
    return "\n".join(lines) + "\n"


def render_tool(env: ClientEnv, tool_id: str, shell: str) -> str:
    """The lines one tool needs, in `shell`'s syntax (`aibridge-proxy env --tool`, and the
    developer page: both print exactly this)."""
    tool = TOOLS_BY_ID[tool_id]
    if tool.ide == "vscode":
        return vscode_settings(env)
    if tool.ide == "jetbrains":
        return jetbrains_settings(env)
    values = dict(pair for _, pairs in env.groups() for pair in pairs)
    return "\n".join(assignment(shell, name, values[name]) for name in tool.variables) + "\n"


def vscode_settings(env: ClientEnv) -> str:
    vscode = {
        "http.proxy": env.proxy_url,
        "http.proxySupport": "override",
        "http.systemCertificates": True,
        "http.noProxy": env.no_proxy.split(","),
    }
    return (
        "// VS Code settings.json (Remote/Dev Containers: the Remote tab). Settings do not expand\n"
        "// variables: write the token itself. Copilot in VS Code reads CAs from the OS trust\n"
        "// store only: run `aibridge-proxy trust` once.\n" + json.dumps(vscode, indent=2) + "\n"
    )


def jetbrains_settings(env: ClientEnv) -> str:
    parts = urlsplit(env.proxy_url.replace("$", "%24"))
    host = parts.hostname or "proxy"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    user = parts.username or "coder"
    return (
        "# JetBrains IDEs: Settings > Appearance & Behavior > System Settings > HTTP Proxy\n"
        f"#   Manual proxy configuration, HTTP, host {host}, port {port}\n"
        f"#   Proxy authentication: login {user}, password = your Coder token, Remember\n"
        "#   Trust the CA: `aibridge-proxy trust`, or Settings > Tools > Server Certificates\n"
    )


def ide_settings(env: ClientEnv) -> str:
    return vscode_settings(env) + "\n" + jetbrains_settings(env)
