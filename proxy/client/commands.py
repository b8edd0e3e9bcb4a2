"""The developer's commands: env, trust, doctor, profile. None of them loads the engine."""

from __future__ import annotations

import argparse
import os
import sys

from proxy.command_args import PROG
from proxy.command_args import UsageError


def check_proxy_url(value: str) -> None:
    """An http:// or https:// URL naming a host: anything else would print export lines that
    send every client nowhere."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value.strip())
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(
            f"--proxy-url {value!r}: give the proxy's URL, e.g. "
            '"http://coder:$CODER_SESSION_TOKEN@proxy.example.com:8888"'
        )


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
    check_proxy_url(args.proxy_url)
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


COPILOT_API = "api.individual.githubcopilot.com"
COPILOT_COMPLETIONS = (
    "proxy.individual.githubcopilot.com"  # observed by default (manual, Routed hosts)
)


def cmd_doctor(args: argparse.Namespace) -> int:
    import os

    from proxy.client.doctor import run_doctor

    if args.tool is not None:  # Copilot: its API host, and its completions host besides
        target = args.host or COPILOT_API
        return run_doctor(os.environ, target=target, completions=COPILOT_COMPLETIONS)
    return run_doctor(os.environ, target=args.host or "api.openai.com")


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
