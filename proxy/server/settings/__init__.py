"""
Settings: defaults < YAML file < environment < flags, parsed and validated once into one frozen
`Settings` object. Every error names the key, the value and where it came from, so the CLI can
print one line and exit 2.

    base.py      Source, SettingsError, how a value is shown in an error
    parsers.py   raw value -> typed value, one parser per kind of value
    fields.py    the table: each setting declared once (key, env, flag, parser, default, help,
                 the engine option it feeds)
    model.py     the frozen Settings and what derives from it (provider table, target, policy)
    checks.py    cross-checks between settings
    loading.py   the layering of sources; the only module that reads the environment
"""

from proxy.server.settings.base import ENV_PREFIX
from proxy.server.settings.base import SettingsError
from proxy.server.settings.base import Source
from proxy.server.settings.fields import FIELDS
from proxy.server.settings.fields import FIELDS_BY_KEY
from proxy.server.settings.fields import Field
from proxy.server.settings.loading import default_state_dir
from proxy.server.settings.loading import load_settings
from proxy.server.settings.loading import read_config_file
from proxy.server.settings.model import Settings
from proxy.server.settings.model import build_provider_table
from proxy.server.settings.parsers import parse_listen

__all__ = [
    "ENV_PREFIX", "FIELDS", "FIELDS_BY_KEY", "Field", "Settings", "SettingsError", "Source",
    "build_provider_table", "default_state_dir", "load_settings", "parse_listen",
    "read_config_file",
]  # fmt: skip
