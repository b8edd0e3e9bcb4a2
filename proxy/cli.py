"""
`aibridge-proxy`: serve | reload | explain | ca init | ca show | env | trust | doctor | profile |
demo | gateway.

User mistakes end in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from certs.authority import DEFAULT_COMMON_NAME
from certs.authority import DEFAULT_VALIDITY_DAYS
from certs.authority import CAError
from proxy.client.commands import cmd_doctor
from proxy.client.commands import cmd_env
from proxy.client.commands import cmd_profile
from proxy.client.commands import cmd_trust
from proxy.command_args import PROG
from proxy.command_args import UsageError
from proxy.command_args import add_setting_flags
from proxy.devtools.commands import cmd_demo
from proxy.devtools.commands import cmd_gateway
from proxy.server.commands import cmd_ca_init
from proxy.server.commands import cmd_ca_show
from proxy.server.commands import cmd_catalog
from proxy.server.commands import cmd_explain
from proxy.server.commands import cmd_mcp
from proxy.server.commands import cmd_reload
from proxy.server.commands import cmd_serve
from proxy.server.commands import cmd_usage
from proxy.server.errors import StartupError
from proxy.server.settings import SettingsError

# Each subcommand imports its own code when it runs: `env`, `trust` and `doctor` on a
# developer's laptop never load the engine (tests/e2e/test_cli.py checks it).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Forward proxy that routes AI-provider traffic to a Coder AI Bridge gateway.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    add_setting_flags(serve)
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--report-fd", type=int, default=None, help=argparse.SUPPRESS)

    reload = sub.add_parser(
        "reload",
        help="make the running service re-read its configuration; fails if it was refused",
    )
    reload.add_argument("--pid", type=int, required=True, help="the service's main process")
    reload.add_argument(
        "--state-dir",
        type=Path,
        help="the service's state_dir, if set in its configuration "
        "(default: $STATE_DIRECTORY, as systemd sets it, or serve's default)",
    )
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it")

    explain = sub.add_parser(
        "explain", help="show what the proxy would do with a request (nothing is sent)"
    )
    add_setting_flags(explain)
    explain.add_argument("url", help="e.g. https://api.openai.com/v1/chat/completions")
    explain.add_argument("--method", default="POST")
    explain.add_argument("--user", help="the Coder user name")
    explain.add_argument("--workspace", help="the workspace (the proxy user name)")
    explain.add_argument("--model", help="the model in the request body")
    explain.add_argument("--client", help="the client's IP address")
    explain.add_argument("--profile", help="the profile in force (default: the configured one)")

    profile = sub.add_parser(
        "profile", help="show or switch your routing profile (through your HTTPS_PROXY)"
    )
    profile_sub = profile.add_subparsers(dest="profile_command", required=True)
    profile_sub.add_parser("list", help="the profiles this proxy offers")
    profile_sub.add_parser("show", help="the profile your workspace uses")
    use = profile_sub.add_parser("use", help="switch your workspace to a profile")
    use.add_argument("name", nargs="?", help="the profile (omit with --default)")
    use.add_argument("--default", action="store_true", help="back to the configured default")

    ca = sub.add_parser("ca", help="create or inspect the CA")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="generate a new CA")
    add_setting_flags(init)
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    init.add_argument("--common-name", default=DEFAULT_COMMON_NAME)
    init.add_argument("--days", type=int, default=DEFAULT_VALIDITY_DAYS, help="validity in days")
    init.add_argument(
        "--unconstrained",
        action="store_true",
        help="no name constraints: the CA could sign for any site (not recommended)",
    )
    show = ca_sub.add_parser("show", help="print the CA's subject, fingerprint and client settings")
    add_setting_flags(show)
    show.add_argument("--proxy-url", default=None, help="proxy URL clients use (for the env lines)")

    demo = sub.add_parser("demo", help="run the proxy and a local gateway, and send real requests")
    demo.add_argument("--keep", action="store_true", help="keep serving after the requests")

    env = sub.add_parser("env", help="print the client settings a developer needs")
    env.add_argument(
        "--proxy-url",
        required=True,
        help='e.g. "http://coder:$CODER_SESSION_TOKEN@proxy.example.com:8888"',
    )
    env.add_argument("--ca", required=True, type=Path, help="the proxy's CA certificate (ca.pem)")
    env.add_argument(
        "--bundle", type=Path, help="system roots + CA (default: written next to --ca)"
    )
    env.add_argument("--shell", choices=("bash", "zsh", "fish", "powershell"), default="bash")
    env.add_argument("--no-proxy", default="localhost,127.0.0.1,::1", help="hosts that stay direct")
    env.add_argument("--ide", action="store_true", help="also print VS Code and JetBrains settings")
    env.add_argument(
        "--tool",
        help="only what one tool needs: copilot-vscode, copilot-jetbrains, copilot-cli, "
        "claude-code, codex, opencode, python, node, go, curl",
    )

    trust = sub.add_parser("trust", help="add the CA to (or --remove it from) the OS trust store")
    trust.add_argument("--ca", required=True, type=Path, help="the proxy's CA certificate (ca.pem)")
    trust.add_argument("--remove", action="store_true", help="take it out again")
    trust.add_argument(
        "--platform",
        choices=("debian", "redhat", "macos", "windows"),
        help="default: this machine's",
    )
    trust.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    trust.add_argument("--dry-run", action="store_true", help="only print what would be done")

    doctor = sub.add_parser("doctor", help="check this machine's client set-up, step by step")
    doctor.add_argument(
        "--host",
        default=None,
        help="provider host to test with "
        "(default api.openai.com; Copilot's API with --tool copilot-*)",
    )
    doctor.add_argument(
        "--tool",
        choices=("copilot-jetbrains", "copilot-vscode"),
        default=None,
        help="also check what this tool needs: Copilot's API and completions hosts",
    )

    usage = sub.add_parser(
        "usage", help="requests, tokens and bytes per user, tool or model, from the access log"
    )
    usage.add_argument("--config", help="YAML configuration file (env AIBRIDGE_PROXY_CONFIG)")
    usage.add_argument(
        "--log",
        type=Path,
        help="the access log (default: log.access_file from the configuration; - reads stdin)",
    )
    usage.add_argument("--since", default="7d", help="7d, 24h, 30m or a date (default 7d)")
    usage.add_argument("--until", default=None, help="a date or time (default: now)")
    usage.add_argument(
        "--by",
        default="user",
        help="user, tool, model, workspace, provider, dlp, limit, mcp_server, mcp_tool, "
        "initiator (Copilot: user or agent), session or repo",
    )
    usage.add_argument("--format", default="table", choices=("table", "csv", "json"))

    mcp = sub.add_parser("mcp", help="governed MCP servers' approved tool definitions")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", help="YAML configuration file (env AIBRIDGE_PROXY_CONFIG)")
    where.add_argument("--state-dir", help="the service's state_dir (default: the configuration's)")
    mcp_sub = mcp.add_subparsers(dest="mcp_command", required=True)
    mcp_sub.add_parser("pins", parents=[where],
                       help="each server's pinned and changed tool definitions")  # fmt: skip
    accept = mcp_sub.add_parser(
        "accept", parents=[where],
        help="approve what a server's changed tools now say (they are shown again)",
    )  # fmt: skip
    accept.add_argument("server", help="the server entry's name (mcp: [{name: ...}])")

    catalog = sub.add_parser("catalog", help="list the AI host catalog (entries for observe)")
    catalog.add_argument("--format", default="table", choices=("table", "markdown", "json"))

    gw = sub.add_parser("gateway", help="run the embedded local gateway on its own")
    gw.add_argument("--listen", default="127.0.0.1:8080", help="host:port (default %(default)s)")
    gw.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN[=USER]",
        help="a Coder token the gateway accepts; repeatable",
    )
    gw.add_argument("--no-websocket", action="store_true", help="answer WebSocket upgrades 501")
    return parser


def version_line() -> str:
    """Our version and the engine's, read from the installed metadata (no engine import)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"{PROG} {of('aibridge-proxy')} (mitmproxy {of('mitmproxy')}, Python {python})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.serve_argv = argv[1:]  # for worker processes: the same settings as ours
    handlers = {
        "serve": cmd_serve,
        "reload": cmd_reload,
        "explain": cmd_explain,
        "profile": cmd_profile,
        "demo": cmd_demo,
        "gateway": cmd_gateway,
        "env": cmd_env,
        "trust": cmd_trust,
        "doctor": cmd_doctor,
        "usage": cmd_usage,
        "catalog": cmd_catalog,
        "mcp": cmd_mcp,
    }
    if args.command == "ca":
        handler = cmd_ca_init if args.ca_command == "init" else cmd_ca_show
    else:
        handler = handlers[args.command]
    try:
        return handler(args)
    except (SettingsError, StartupError, CAError, UsageError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
