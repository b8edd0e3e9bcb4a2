"""Loading: defaults < YAML file < environment < flags, each value parsed once with the
field's parser; unknown keys are refused with a did-you-mean. The only place that reads the
environment."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.server.settings.base import ENV_PREFIX
from proxy.server.settings.base import SettingsError
from proxy.server.settings.base import Source
from proxy.server.settings.base import shown
from proxy.server.settings.checks import check_combinations
from proxy.server.settings.fields import FIELDS
from proxy.server.settings.fields import FIELDS_BY_KEY
from proxy.server.settings.fields import Field
from proxy.server.settings.model import Settings


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mappings -> dotted keys, except for values of mapping-typed fields."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if v is None and any(f.startswith(key + ".") for f in FIELDS_BY_KEY):
            continue  # a section whose keys are all commented out
        if isinstance(v, Mapping) and key not in FIELDS_BY_KEY:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown(key: str, source: Source) -> SettingsError:
    hint = difflib.get_close_matches(key, FIELDS_BY_KEY, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return SettingsError(f"unknown setting {key!r} in {source}{extra}")


def read_config_file(path: Path) -> dict[str, Any]:
    source = Source("file", str(path))
    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"cannot read {source}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SettingsError(f"{source}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source} must hold a mapping of settings")
    flat = _flatten(data)
    for key in flat:
        if key not in FIELDS_BY_KEY:
            raise _unknown(key, source)
    return flat


def default_state_dir(environ: Mapping[str, str]) -> Path:
    if d := environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(d.split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".local/state")
    return Path(base) / "aibridge-proxy"


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    require_gateway: bool = False,
) -> Settings:
    """Merge all sources, validate every value, and return the frozen Settings.

    `flags` maps field keys (dotted) to values already given on the command line (None = not
    given). The config file comes from `config_file`, else AIBRIDGE_PROXY_CONFIG.
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for key in flags:
        if key not in FIELDS_BY_KEY:
            raise SettingsError(f"unknown setting {key!r}")

    config_path = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = read_config_file(Path(config_path)) if config_path else {}

    known_env = {f.env for f in FIELDS} | {ENV_PREFIX + "CONFIG"}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known_env:
            raise _unknown(name[len(ENV_PREFIX) :].lower(), Source("env", name))

    values: dict[str, Any] = {}
    for f in FIELDS:
        layers: list[tuple[Any, Source]] = [(f.default, Source("default", f.key))]
        if f.key in file_values:
            layers.append((file_values[f.key], Source("file", str(config_path))))
        for name in (*f.aliases, f.env):  # our own name wins over Coder's
            if name in environ:
                layers.append((environ[name], Source("env", name)))
        if f.key in flags:
            layers.append((flags[f.key], Source("flag", f.flag)))
        if f.merge:
            merged: dict = {}
            for raw, source in layers:
                merged.update(_parse(f, raw, source))
            values[f.attr] = merged
        else:
            raw, source = layers[-1]
            values[f.attr] = _parse(f, raw, source)
            values.setdefault("_sources", {})[f.key] = (raw, source)

    sources: dict[str, tuple[Any, Source]] = values.pop("_sources")
    if values["state_dir"] is None:
        values["state_dir"] = default_state_dir(environ)
    watchdog = environ.get("WATCHDOG_USEC", "")
    settings = Settings(
        **values,
        config_file=Path(config_path) if config_path else None,
        notify_socket=environ.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(watchdog) if watchdog.isdigit() else None,
    )
    check_combinations(settings, sources, require_gateway)
    return settings


def _parse(f: Field, raw: Any, source: Source) -> Any:
    try:
        return f.parse(raw)
    except ValueError as e:
        raise SettingsError(f"{f.key}: {shown(raw)!r} from {source} {e}") from None
