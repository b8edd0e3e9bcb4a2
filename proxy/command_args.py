"""What every command shares: the program's name, the one-line usage error, and the settings
flags (one per declared setting) turned into a Settings object."""

from __future__ import annotations

import argparse

from proxy.server.settings import FIELDS
from proxy.server.settings import Settings
from proxy.server.settings import load_settings
from proxy.server.settings.parsers import parse_bool

PROG = "aibridge-proxy"


class UsageError(Exception):
    pass


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file (env AIBRIDGE_PROXY_CONFIG)")
    group = parser.add_argument_group("settings (also in the config file and AIBRIDGE_PROXY_* env)")
    for f in FIELDS:
        if f.key == "providers":
            group.add_argument(
                f.flag,
                dest="providers",
                action="append",
                metavar="HOST=NAME[@/PATH,...]",
                help="route a host to a provider (host=- removes it); repeatable",
            )
        elif f.parse is parse_bool:
            group.add_argument(
                f.flag, dest=f.key, nargs="?", const="true", metavar="BOOL", help=f.help
            )
        else:
            group.add_argument(
                f.flag, dest=f.key, metavar=f.key.split(".")[-1].upper(), help=f.help
            )


def flag_values(args: argparse.Namespace) -> dict:
    values = {f.key: getattr(args, f.key, None) for f in FIELDS if f.key != "providers"}
    if getattr(args, "providers", None):
        values["providers"] = " ".join(args.providers)
    return values


def settings_from(args: argparse.Namespace, require_gateway: bool) -> Settings:
    return load_settings(
        flag_values(args), config_file=args.config, require_gateway=require_gateway
    )
