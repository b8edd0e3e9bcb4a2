"""Jinja2 rendering of the pages, and the facts they are made of."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import jinja2

from addons.developer.client_env import TOOLS
from addons.developer.client_env import ClientEnv
from addons.developer.client_env import assignment
from addons.developer.client_env import render_tool
from addons.developer.trust_plan import plan
from addons.developer.verdicts import BROWSER_UNTRUSTED
from addons.developer.verdicts import Verdict

RESERVED_HOST = "aibridge-proxy.internal"
CHECK_PATH = "/.well-known/aibridge-proxy/check"
PLATFORMS = {"linux": "Linux", "macos": "macOS", "windows": "Windows"}
SHELLS = {"bash": "bash / zsh", "fish": "fish", "powershell": "PowerShell"}
_TEMPLATES = Path(__file__).with_name("templates")
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def platform_and_shell(
    asked_platform: str, asked_shell: str, user_agent: str | None
) -> tuple[str, str]:
    """What the page shows: the OS and shell the developer picked (the page's links), else the
    browser's OS and that OS's usual shell."""
    platform = asked_platform if asked_platform in PLATFORMS else platform_of(user_agent)
    shell = (
        asked_shell
        if asked_shell in SHELLS
        else ("powershell" if platform == "windows" else "bash")
    )
    return platform, shell


def platform_of(user_agent: str | None) -> str:
    """The developer's OS, from the browser's User-Agent (the page offers the others too)."""
    ua = (user_agent or "").lower()
    if "windows" in ua:
        return "windows"
    if "mac os x" in ua or "macintosh" in ua:
        return "macos"
    return "linux"


def client_files(platform: str) -> tuple[str, str]:
    """Where the page tells the developer to keep the CA and the bundle."""
    if platform == "windows":
        return r"$USERPROFILE\.aibridge-proxy\ca.pem", r"$USERPROFILE\.aibridge-proxy\ca-bundle.pem"
    return "$HOME/.aibridge-proxy/ca.pem", "$HOME/.aibridge-proxy/ca-bundle.pem"


@dataclass(frozen=True)
class ToolLines:
    id: str
    name: str
    note: str
    lines: str


@dataclass(frozen=True)
class RecentRow:
    time: str
    tool: str
    where: str
    model: str
    status: str
    duration: str
    tokens: str
    problem: str = ""
    fix: str = ""


@dataclass(frozen=True)
class ProfileView:
    active: str | None
    default: str | None
    names: tuple[str, ...]


@dataclass(frozen=True)
class LimitRow:
    """One limit on the developer page: its use now and when it resets."""

    name: str
    description: str
    used: str  # "12", or "$3.20" for a budget in dollars
    left: str
    resets: str  # "2026-12-03 14:03:00 UTC", or "" for open requests


@dataclass
class DeveloperPage:
    proxy_address: str  # host:port the developer's machine uses for the proxy
    ca_fingerprint: str
    platform: str
    shell: str
    user: str | None = None  # None on the admin listener (no proxy credentials there)
    workspace: str | None = None
    verdict: Verdict | None = None  # the proxy credentials' fault, when they have one
    check_url: str | None = None  # a routed host's check path; None: no routed host
    recent: list[RecentRow] | None = None
    limits: list[LimitRow] | None = None  # None: no limit applies (or the store cannot say)
    copilot: list[str] | None = None  # "Copilot premium interactions: 212 of 300 left, ..."
    profiles: ProfileView | None = None
    notice: str | None = None  # e.g. "switched to profile fast"
    # the CA downloads, relative to the page (the same paths on both listeners)
    links: dict[str, str] = field(
        default_factory=lambda: {
            "ca_pem": "/ca.pem",
            "ca_der": "/ca.cer",
            "bundle": "/ca-bundle.pem",
        }
    )

    @property
    def proxy_url(self) -> str:
        return f"http://{self.workspace or 'coder'}:$CODER_SESSION_TOKEN@{self.proxy_address}"

    def client_env(self) -> ClientEnv:
        ca, bundle = client_files(self.platform)
        return ClientEnv(self.proxy_url, Path(ca), Path(bundle))

    def tools(self) -> list[ToolLines]:
        env = self.client_env()
        return [ToolLines(t.id, t.name, t.note, render_tool(env, t.id, self.shell)) for t in TOOLS]

    def token_line(self) -> str:
        """How this shell keeps the token where the lines expect it."""
        return assignment(self.shell, "CODER_SESSION_TOKEN", "<your token>")

    def trust_command(self) -> str:
        ca, _ = client_files(self.platform)
        return f"aibridge-proxy trust --ca {ca.replace('$', '$env:') if self.shell == 'powershell' else ca}"

    def download_lines(self) -> str:
        """Fetch the CA and the bundle through the proxy itself (plain HTTP: no trust needed)."""
        ca, bundle = client_files(self.platform)
        base = f"http://{RESERVED_HOST}"
        proxy = self.proxy_url
        if self.platform == "windows":
            ps_proxy = proxy.replace("$", "$env:")
            return (
                f'New-Item -ItemType Directory -Force "$env:USERPROFILE\\.aibridge-proxy" | Out-Null\n'
                f'curl.exe -sSf -x "{ps_proxy}" -o "{ca.replace("$", "$env:")}" {base}/ca.pem\n'
                f'curl.exe -sSf -x "{ps_proxy}" -o "{bundle.replace("$", "$env:")}" {base}/ca-bundle.pem\n'
            )
        return (
            'mkdir -p "$HOME/.aibridge-proxy"\n'
            f'curl -sSf -x "{proxy}" -o "{ca}" {base}/ca.pem\n'
            f'curl -sSf -x "{proxy}" -o "{bundle}" {base}/ca-bundle.pem\n'
        )

    def trust_steps(self, ca_pem: bytes) -> list[str]:
        """The OS trust-store commands, as `aibridge-proxy trust` would run them."""
        ca, _ = client_files(self.platform)
        if self.platform == "linux":
            steps = ["# Debian, Ubuntu:"] + plan("debian", ca_pem, False).describe()
            steps += ["# Fedora, RHEL:"] + plan("redhat", ca_pem, False).describe()
            return [s.replace("write ", f"sudo cp {ca} ") if s.startswith("write") else
                    (s if s.startswith("#") else "sudo " + s) for s in steps]  # fmt: skip
        described = plan(self.platform, ca_pem, False).describe()
        return [s for s in described if not s.startswith("write")]


@dataclass(frozen=True)
class AdminView:
    listeners: list[tuple[str, str]]
    ca_fingerprint: str
    ca_expiry: str
    gateways: list[tuple[str, str, str]]  # name, URL, health
    traffic: list[tuple[str, int, int]]  # provider, requests, errors
    window_minutes: int
    last_reload: str
    # requests refused by each limit since start: (limit, user or "" for all users, count)
    limit_refusals: list[tuple[str, str, int]] = field(default_factory=list)


def nonce() -> str:
    return secrets.token_urlsafe(16)


def content_security_policy(page_nonce: str, check_origin: str | None) -> str:
    connect = f" {check_origin}" if check_origin else ""
    return (
        f"default-src 'none'; style-src 'nonce-{page_nonce}'; script-src 'nonce-{page_nonce}'; "
        f"connect-src 'self'{connect}; img-src data:; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def page_headers(page_nonce: str, check_url: str | None) -> dict[str, str]:
    """The headers both listeners send with a page: never cached, no framing, and a CSP that
    lets only the page's own nonce'd style and script run."""
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": content_security_policy(page_nonce, origin_of(check_url)),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # no-referrer would make a form's Origin "null"
    }


def render_developer(page: DeveloperPage, ca_pem: bytes, page_nonce: str, admin=None) -> str:
    return _ENV.get_template("developer.html.j2").render(
        page=page,
        ca_pem=ca_pem,
        admin=admin,
        nonce=page_nonce,
        platforms=PLATFORMS,
        shells=SHELLS,
        untrusted=BROWSER_UNTRUSTED,
        reserved_host=RESERVED_HOST,
    )


def origin_of(url: str | None) -> str | None:
    m = re.match(r"^(https?://[^/]+)", url or "")
    return m.group(1) if m else None
