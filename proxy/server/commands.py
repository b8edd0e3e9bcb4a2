"""The operator's commands: serve, reload, explain, ca init and show, usage, catalog. Each
imports what it runs only when it runs."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from proxy.command_args import PROG
from proxy.command_args import UsageError
from proxy.command_args import settings_from
from proxy.server.settings import Settings
from proxy.server.settings import default_state_dir
from proxy.server.settings import load_settings


def cmd_serve(args: argparse.Namespace) -> int:
    # the supervisor of several workers never imports the engine: only workers run it
    from proxy.server.limits import raise_open_files_limit
    from proxy.server.logs import configure_logging
    from proxy.server.workers import Supervisor
    from proxy.server.workers import worker_count

    settings = settings_from(args, require_gateway=True)
    configure_logging(settings.log_level, settings.log_format, access_file=settings.log_access_file)
    raise_open_files_limit()  # before any listener or worker: they all inherit it

    def reload() -> Settings:
        return settings_from(args, require_gateway=True)

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
    from proxy.server.explain import ExplainError
    from proxy.server.explain import explain

    settings = settings_from(args, require_gateway=False)
    try:
        lines = explain(
        settings, args.url, method=args.method, user=args.user, workspace=args.workspace,
            model=args.model, client=args.client, profile=args.profile,
        )  # fmt: skip
    except ExplainError as e:
        raise UsageError(str(e)) from None
    for line in lines:
        print(line)
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

    settings = settings_from(args, require_gateway=False)
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

    settings = settings_from(args, require_gateway=False)
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
        reader = usage_report.LogReader()
        records = reader.lines(usage_report.log_files(path), stdin=sys.stdin)
        rows = usage_report.summarize(records, args.by, since, until)
    except OSError as e:
        raise UsageError(f"cannot read the access log {path}: {e.strerror}") from None
    except usage_report.ReportError as e:
        raise UsageError(str(e)) from None
    print(usage_report.render(rows, args.by, args.format))
    if reader.unreadable:
        print(f"usage: skipped {reader.unreadable} unreadable log lines", file=sys.stderr)
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


def cmd_mcp(args: argparse.Namespace) -> int:
    from addons.govern.mcp_pins import PINS_FILE
    from addons.govern.mcp_pins import PinBook

    settings = settings_from(args, require_gateway=False)
    book = PinBook(settings.state_path / PINS_FILE)
    names = {s.name for s in settings.mcp_servers.servers}
    if args.mcp_command == "pins":
        pins = book.summary()
        for server in sorted(names | set(pins)):
            entry = pins.get(server, {})
            changed = sorted(entry.get("changed", {}))
            gone = "" if server in names else " (no longer configured)"
            print(f"{server}{gone}: {len(entry.get('pinned', {}))} tools pinned; changed: "
                  f"{', '.join(changed) if changed else 'none'}")  # fmt: skip
        return 0
    if args.server not in names:
        raise UsageError(f"mcp accept: no MCP server entry is named {args.server!r} "
                         f"(mcp: in the configuration names {', '.join(sorted(names)) or 'none'})")  # fmt: skip
    accepted = book.accept(args.server)
    if accepted:
        print(f"{args.server}: accepted the new definitions of {', '.join(accepted)}")
    else:
        print(f"{args.server}: no changed tool definition to accept")
    return 0
