"""
`aibridge-proxy`: serve | reload | explain | ca init | ca show | env | trust | doctor | profile |
demo | gateway.

User mistakes end in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from certs.authority import DEFAULT_COMMON_NAME
from certs.authority import DEFAULT_VALIDITY_DAYS
from certs.authority import CAError
from proxy.server.errors import StartupError
from proxy.server.settings import FIELDS
from proxy.server.settings import Settings
from proxy.server.settings import SettingsError
from proxy.server.settings import default_state_dir
from proxy.server.settings import load_settings

# Each subcommand imports its own code when it runs: `env`, `trust` and `doctor` on a
# developer's laptop never load the engine (tests/e2e/test_cli.py checks it).

PROG = "aibridge-proxy"


class UsageError(Exception):
    pass


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file (env AIBRIDGE_PROXY_CONFIG)")
    group = parser.add_argument_group("settings (also in the config file and AIBRIDGE_PROXY_* env)")
    for f in FIELDS:
        if f.key == "providers":
            group.add_argument(
                "--provider",
                dest="providers",
                action="append",
                metavar="HOST=NAME[@/PATH,...]",
                help="route a host to a provider (host=- removes it); repeatable",
            )
        elif f.parse.__name__ == "_bool":
            group.add_argument(
                f.flag, dest=f.key, nargs="?", const="true", metavar="BOOL", help=f.help
            )
        else:
            group.add_argument(
                f.flag, dest=f.key, metavar=f.key.split(".")[-1].upper(), help=f.help
            )


def _flag_values(args: argparse.Namespace) -> dict:
    values = {f.key: getattr(args, f.key, None) for f in FIELDS if f.key != "providers"}
    if getattr(args, "providers", None):
        values["providers"] = " ".join(args.providers)
    return values


def _settings_from(args: argparse.Namespace, require_gateway: bool) -> Settings:
    return load_settings(
        _flag_values(args), config_file=args.config, require_gateway=require_gateway
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Forward proxy that routes AI-provider traffic to a Coder AI Bridge gateway.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    _add_setting_flags(serve)
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
    _add_setting_flags(explain)
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
    _add_setting_flags(init)
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
    _add_setting_flags(show)
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
    doctor.add_argument("--host", default="api.openai.com", help="provider host to test with")

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
    usage.add_argument("--by", default="user", help="user, tool, model, workspace or provider")
    usage.add_argument("--format", default="table", choices=("table", "csv", "json"))

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


def cmd_serve(args: argparse.Namespace) -> int:
    # the supervisor of several workers never imports the engine: only workers run it
    from proxy.server.limits import raise_open_files_limit
    from proxy.server.logs import configure_logging
    from proxy.server.workers import Supervisor
    from proxy.server.workers import worker_count

    settings = _settings_from(args, require_gateway=True)
    configure_logging(settings.log_level, settings.log_format, access_file=settings.log_access_file)
    raise_open_files_limit()  # before any listener or worker: they all inherit it

    def reload() -> Settings:
        return _settings_from(args, require_gateway=True)

    if args.worker_index is not None:
        from addons.engine.reuse_port import enable_reuse_port
        from proxy.server.app import ProxyApp

        enable_reuse_port()
        app = ProxyApp(
            settings,
            reload_settings=reload,
            worker_index=args.worker_index,
            supervisor_pid=args.supervisor_pid,
            report_fd=args.report_fd,
        )
        run_event_loop(app.serve_forever())
    elif (count := worker_count(settings.workers)) > 1:
        run_event_loop(Supervisor(settings, args.serve_argv, reload, count).run())
    else:
        from proxy.server.app import ProxyApp

        run_event_loop(ProxyApp(settings, reload_settings=reload).serve_forever())
    return 0


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


def cmd_reload(args: argparse.Namespace) -> int:
    from proxy.server.reloading import ReloadError
    from proxy.server.reloading import request_reload

    # The configuration is the service's to judge: read here, a broken file would never reach it
    state_dir = args.state_dir or default_state_dir(os.environ)
    try:
        print(request_reload(args.pid, state_dir, args.timeout))
    except ReloadError as e:
        print(f"{PROG} reload: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from proxy.server.explain import explain

    settings = _settings_from(args, require_gateway=False)
    for line in explain(
        settings, args.url, args.method, args.user, args.workspace, args.model, args.client,
        args.profile,
    ):  # fmt: skip
        print(line)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from proxy.client.profile import ProfileError
    from proxy.client.profile import call
    from proxy.client.profile import render

    try:
        if args.profile_command == "use":
            if bool(args.name) == bool(args.default):
                raise UsageError("profile use: name a profile, or pass --default")
            state = call(os.environ, None if args.default else args.name, switch=True)
        else:
            state = call(os.environ)
    except ProfileError as e:
        print(f"{PROG} profile: {e}", file=sys.stderr)
        return 1
    print(render(state, args.profile_command), end="")
    return 0


def run_event_loop(main) -> None:
    """The standard library's event loop, on purpose. mitmproxy (12.3 and later) installs
    asyncio's eager task factory on the running loop; that factory and the loop come from the
    same interpreter only with the standard loop. A third-party loop (uvloop 0.23 on Python
    3.13) calls the factory with arguments it does not take, and the service died at start-up.
    tests/e2e/test_event_loop.py proves the pairing on every supported interpreter."""
    asyncio.run(main)


def cmd_ca_init(args: argparse.Namespace) -> int:
    from certs.authority import constraint_domains
    from certs.authority import generate_ca
    from certs.authority import write_ca
    from certs.prepare import write_client_bundle

    settings = _settings_from(args, require_gateway=False)
    hosts, uncoverable = settings.ca_hosts
    permitted = None if args.unconstrained else constraint_domains(hosts)
    if uncoverable and not args.unconstrained:
        print(
            "warning: not in the name constraints (a wildcard inside a name could only permit "
            f"its whole suffix): {', '.join(uncoverable)}; route the concrete hosts instead",
            file=sys.stderr,
        )
    ca = generate_ca(args.common_name, args.days, args.key_type, permitted)
    write_ca(ca, settings.ca_cert_path, settings.ca_key_path, force=args.force)
    write_client_bundle(ca, settings.client_bundle_path)
    if args.unconstrained:
        print(
            "warning: this CA has no name constraints: anyone holding its key can impersonate "
            "any site to clients that trust it",
            file=sys.stderr,
        )
    print(f"CA certificate: {settings.ca_cert_path}")
    print(f"CA key:         {settings.ca_key_path} (mode 0600)")
    print(f"SHA-256:        {ca.fingerprint}")
    print(f"Permitted:      {', '.join(permitted) if permitted else 'any name (unconstrained)'}")
    return 0


def cmd_ca_show(args: argparse.Namespace) -> int:
    from addons.developer.client_env import ClientEnv
    from addons.developer.client_env import render
    from certs.authority import load_ca

    settings = _settings_from(args, require_gateway=False)
    ca = load_ca(settings.ca_cert_path, settings.ca_key_path, check_permissions=False)
    host, port = settings.listen
    proxy_url = args.proxy_url or f"http://coder:$CODER_SESSION_TOKEN@{host or 'localhost'}:{port}"
    permitted = ca.permitted_domains()
    print(f"Subject:     {ca.cert.subject.rfc4514_string()}")
    print(f"SHA-256:     {ca.fingerprint}")
    print(f"Not after:   {ca.not_after:%Y-%m-%d %H:%M:%S} UTC")
    print(
        f"Permitted:   {', '.join(permitted) if permitted is not None else 'any name (unconstrained)'}"
    )
    print(f"Certificate: {settings.ca_cert_path}")
    print()
    env = ClientEnv(proxy_url, settings.ca_cert_path, settings.client_bundle_path)
    print(render(env, "bash"), end="")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from cryptography.x509 import load_pem_x509_certificate

    from addons.developer.client_env import TOOLS_BY_ID
    from addons.developer.client_env import ClientEnv
    from addons.developer.client_env import ide_settings
    from addons.developer.client_env import render
    from addons.developer.client_env import render_tool
    from certs.bundle import build_bundle

    if args.tool is not None and args.tool not in TOOLS_BY_ID:
        raise UsageError(f"--tool {args.tool!r}: choose one of {', '.join(TOOLS_BY_ID)}")
    try:
        ca_pem = args.ca.read_bytes()
        load_pem_x509_certificate(ca_pem)
    except (OSError, ValueError):
        raise UsageError(f"--ca: {args.ca} is not a readable PEM certificate") from None
    bundle = args.bundle
    if bundle is None:
        bundle = args.ca.with_name(args.ca.stem + "-bundle.pem")
        try:
            bundle.write_bytes(build_bundle() + ca_pem)
        except OSError as e:
            raise UsageError(
                f"--bundle: cannot write {bundle}: {e.strerror}; pass --bundle PATH"
            ) from None
    env = ClientEnv(args.proxy_url, args.ca.resolve(), bundle.resolve(), args.no_proxy)
    shell = "bash" if args.shell == "zsh" else args.shell
    if args.tool is not None:
        print(render_tool(env, args.tool, shell), end="")
        return 0
    print(render(env, shell), end="")
    if args.ide:
        print()
        print(ide_settings(env), end="")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from proxy.client.trust import TrustError
    from proxy.client.trust import detect_platform
    from proxy.client.trust import execute
    from proxy.client.trust import plan

    try:
        ca_pem = args.ca.read_bytes()
        steps = plan(args.platform or detect_platform(), ca_pem, args.remove)
    except OSError as e:
        raise UsageError(f"--ca: cannot read {args.ca}: {e.strerror}") from None
    except ValueError:
        raise UsageError(f"--ca: {args.ca} is not a PEM certificate") from None
    except TrustError as e:
        raise UsageError(str(e)) from None
    action = "remove the aibridge-proxy CA from" if args.remove else "add the aibridge-proxy CA to"
    print(f"This will {action} the {steps.platform} trust store:")
    for line in steps.describe():
        print(f"  {line}")
    if args.dry_run:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("not confirmed: pass --yes to run without a terminal")
        if input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    try:
        execute(steps)
    except TrustError as e:
        raise UsageError(str(e)) from None
    print("done")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import os

    from proxy.client.doctor import run_doctor

    return run_doctor(os.environ, target=args.host)


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.devtools.demo import run_demo

    return asyncio.run(run_demo(keep=args.keep))


def cmd_usage(args: argparse.Namespace) -> int:
    import datetime

    from proxy.server import usage_report

    path = args.log
    if path is None:
        settings = load_settings({}, config_file=args.config, require_gateway=False)
        if settings.log_access_file is None:
            raise UsageError(
                "no access log is configured: set log.access_file in the proxy's configuration, "
                "or pass --log FILE (--log - reads standard input, e.g. from journalctl -o cat)"
            )
        path = settings.log_access_file
    now = datetime.datetime.now(datetime.UTC)
    try:
        since = usage_report.parse_since(args.since, now)
        until = usage_report.parse_since(args.until, now) if args.until else None
        records = usage_report.read_lines(usage_report.log_files(path), stdin=sys.stdin)
        rows = usage_report.summarize(records, args.by, since, until)
    except OSError as e:
        raise UsageError(f"cannot read the access log {path}: {e.strerror}") from None
    except usage_report.ReportError as e:
        raise UsageError(str(e)) from None
    print(usage_report.render(rows, args.by, args.format))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    import json

    from addons.rules.ai_catalog import load_catalog
    from addons.rules.ai_catalog import markdown_table

    catalog = load_catalog()
    if args.format == "markdown":
        print(markdown_table(catalog))
    elif args.format == "json":
        print(json.dumps({e.id: {"name": e.name, "hosts": catalog.hosts_of(e.id)}
                          for e in catalog.entries.values()}, indent=2))  # fmt: skip
    else:
        for entry in catalog.entries.values():
            print(f"{entry.id:20} {entry.name}: {', '.join(catalog.hosts_of(entry.id))}")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from proxy.devtools.localgateway import LocalGateway
    from proxy.server.settings import parse_listen

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        raise UsageError(f"--listen: {args.listen!r} {e}") from None
    tokens = {}
    for item in args.token:
        token, _, user = item.partition("=")
        tokens[token] = user or "user"
    if not tokens:
        raise UsageError("--token: give at least one token the gateway should accept")

    async def run() -> None:
        gateway = LocalGateway(tokens, websocket=not args.no_websocket)
        url = await gateway.start(host or "0.0.0.0", port)
        print(f"local gateway listening on {url} (target {url}/api/v2/aibridge)", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


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
