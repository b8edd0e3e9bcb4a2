"""
The AI host catalog (ai_hosts.yaml beside this file): known AI tools and providers, their hosts
and what each host is for. Pure data and lookups; nothing here acts on traffic.

Settings and addons name catalog entries by id (`cursor`, `amazon-q`) wherever they take host
patterns (`observe`, `egress.deny_hosts`, `egress.allow_hosts`): a word without a dot is an
entry, anything else a host pattern. `expand` turns such a list into host patterns, each with
the entry it came from.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CATALOG_FILE = Path(__file__).with_name("ai_hosts.yaml")
ROLES = ("model-api", "vendor-backend", "telemetry", "sign-in", "updates", "mcp")
KINDS = ("tool", "provider", "mcp-server")
_ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_HOST = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")


class CatalogError(ValueError):
    """The catalog file or a name in the configuration is wrong; the message says where."""


@dataclass(frozen=True)
class CatalogHost:
    host: str  # exact name or *.suffix
    role: str
    source: str
    confirmed: bool


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    kind: str
    gateway: bool  # AI Bridge can serve its model traffic
    hosts: tuple[CatalogHost, ...]
    uses: tuple[str, ...] = ()  # other entries whose hosts it also talks to


@dataclass(frozen=True)
class Catalog:
    entries: Mapping[str, CatalogEntry]

    def entry(self, entry_id: str) -> CatalogEntry:
        if entry_id not in self.entries:
            close = difflib.get_close_matches(entry_id, list(self.entries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CatalogError(f"{entry_id!r} is not in the AI host catalog{hint}")
        return self.entries[entry_id]

    def hosts_of(self, entry_id: str) -> list[str]:
        """An entry's own hosts, then those of the entries it uses (a tool's whole footprint)."""
        seen: list[str] = []
        todo = [entry_id]
        done: set[str] = set()
        while todo:
            current = self.entry(todo.pop(0))
            if current.id in done:
                continue
            done.add(current.id)
            seen.extend(h.host for h in current.hosts if h.host not in seen)
            todo.extend(current.uses)
        return seen

    def owner(self, host: str) -> CatalogEntry | None:
        """The entry whose host pattern matches `host` (exact names before wildcards)."""
        name = host.lower().rstrip(".")
        best: tuple[int, CatalogEntry] | None = None
        for entry in self.entries.values():
            for h in entry.hosts:
                if h.host == name:
                    return entry
                if host_matches(h.host, name) and (best is None or len(h.host) > best[0]):
                    best = (len(h.host), entry)
        return best[1] if best else None


def host_matches(pattern: str, host: str) -> bool:
    """`*.suffix` matches every name under suffix (any depth); other patterns are globs."""
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        return host.endswith(pattern[1:])
    return fnmatch.fnmatchcase(host, pattern)


def expand(items: Iterable[str], catalog: Catalog | None = None) -> list[tuple[str, str | None]]:
    """Host patterns for a list of entry ids and patterns: (pattern, entry id or None).

    A word without a dot is an entry when the catalog has it; one that only looks like an
    entry's id (`cursr`) is a mistake, said so; any other word is a host (`localhost`)."""
    out: list[tuple[str, str | None]] = []
    for raw in items:
        item = raw.strip().lower()
        if not item:
            continue
        if "." not in item and "*" not in item:
            catalog = catalog or load_catalog()
            if item in catalog.entries or difflib.get_close_matches(
                item, list(catalog.entries), n=1, cutoff=0.75
            ):
                out.extend((h, item) for h in catalog.hosts_of(item))  # or the did-you-mean
                continue
        out.append((item, None))
    return out


@functools.cache
def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CatalogError(f"cannot read the AI host catalog {path}: {e}") from None
    return parse_catalog(raw)


def parse_catalog(raw: Any) -> Catalog:
    """Check the whole file: every field, every role, each host once, every `uses` known."""
    if not isinstance(raw, dict) or not raw:
        raise CatalogError("the AI host catalog must map entry ids to entries")
    entries: dict[str, CatalogEntry] = {}
    owners: dict[str, str] = {}
    for entry_id, body in raw.items():
        where = f"catalog entry {entry_id!r}"
        if not isinstance(entry_id, str) or not _ENTRY_ID.match(entry_id):
            raise CatalogError(f"{where}: ids are lower-case letters, digits and '-'")
        if not isinstance(body, dict) or set(body) - {"name", "kind", "gateway", "uses", "hosts"}:
            raise CatalogError(f"{where}: takes name, kind, gateway, uses, hosts")
        name, kind, gateway = body.get("name"), body.get("kind"), body.get("gateway")
        if not isinstance(name, str) or not name:
            raise CatalogError(f"{where}: needs a name")
        if kind not in KINDS:
            raise CatalogError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if not isinstance(gateway, bool):
            raise CatalogError(f"{where}: gateway must be yes or no")
        uses = body.get("uses") or []
        if not isinstance(uses, list) or not all(isinstance(u, str) for u in uses):
            raise CatalogError(f"{where}: uses must be a list of entry ids")
        hosts_raw = body.get("hosts")
        if hosts_raw is None and uses:
            hosts_raw = []  # a group of other entries (`mcp`: every remote MCP server)
        elif not isinstance(hosts_raw, list) or not hosts_raw:
            raise CatalogError(f"{where}: needs at least one host (or uses)")
        hosts = []
        for item in hosts_raw:
            hosts.append(_parse_host(item, where))
            if (previous := owners.get(hosts[-1].host)) is not None:
                raise CatalogError(f"{where}: host {hosts[-1].host} is already in {previous!r}")
            owners[hosts[-1].host] = entry_id
        entries[entry_id] = CatalogEntry(entry_id, name, kind, gateway, tuple(hosts), tuple(uses))
    for entry in entries.values():
        for used in entry.uses:
            if used not in entries or used == entry.id:
                raise CatalogError(f"catalog entry {entry.id!r}: uses unknown entry {used!r}")
    return Catalog(entries)


def _parse_host(item: Any, where: str) -> CatalogHost:
    if not isinstance(item, dict) or set(item) != {"host", "role", "source", "confirmed"}:
        raise CatalogError(f"{where}: each host needs exactly host, role, source, confirmed")
    host, role, source, confirmed = item["host"], item["role"], item["source"], item["confirmed"]
    if not isinstance(host, str) or not _HOST.match(host):
        raise CatalogError(f"{where}: {host!r} is not a host name or *.suffix")
    if role not in ROLES:
        raise CatalogError(f"{where}: {host} has role {role!r}; roles are {', '.join(ROLES)}")
    if not isinstance(source, str) or not source.startswith("https://"):
        raise CatalogError(f"{where}: {host} needs a source (an https:// page)")
    if not isinstance(confirmed, bool):
        raise CatalogError(f"{where}: {host} confirmed must be true or false")
    return CatalogHost(host, role, source, confirmed)


def markdown_table(catalog: Catalog | None = None) -> str:
    """The manual's catalog table, made from the file when the manual is built."""
    catalog = catalog or load_catalog()
    lines = [
        "| id | tool or provider | AI Bridge can serve it | hosts (role) |",
        "|---|---|---|---|",
    ]
    for entry in catalog.entries.values():
        hosts = ", ".join(
            f"`{h.host}` ({h.role}{'' if h.confirmed else ', unconfirmed'})" for h in entry.hosts
        )
        if entry.uses:
            used = ", ".join(f"`{u}`" for u in entry.uses)
            hosts = f"{hosts}; also {used}" if hosts else f"those of {used}"
        lines.append(
            f"| `{entry.id}` | {entry.name} | {'yes' if entry.gateway else 'no'} | {hosts} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class ObservedHost:
    pattern: str
    entry: str | None  # the catalog entry it came from, if any


class ObservedHosts:
    """The hosts we decrypt only to see and account for their traffic, then forward unchanged.
    Exact names win over `*.suffix` patterns; the longest suffix wins among those."""

    def __init__(self, items: Iterable[str] = (), catalog: Catalog | None = None):
        self._exact: dict[str, ObservedHost] = {}
        suffixes: list[ObservedHost] = []
        for pattern, entry in expand(items, catalog):
            if not _HOST.match(pattern):
                raise CatalogError(
                    f"observe: {pattern!r} is neither a catalog entry nor a host name or *.suffix"
                )
            host = ObservedHost(pattern, entry)
            if pattern.startswith("*."):
                suffixes.append(host)
            else:
                self._exact.setdefault(pattern, host)
        self._suffixes = tuple(sorted(suffixes, key=lambda h: -len(h.pattern)))

    @property
    def patterns(self) -> list[str]:
        return [*self._exact, *(h.pattern for h in self._suffixes)]

    def lookup(self, host: str) -> ObservedHost | None:
        name = host.lower().rstrip(".")
        if (found := self._exact.get(name)) is not None:
            return found
        return next((h for h in self._suffixes if name.endswith(h.pattern[1:])), None)
