"""The AI host catalog file: its schema, each host once, a source for every fact, the entries
the product promises, and the README table made from it."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from addons.rules.ai_catalog import CATALOG_FILE
from addons.rules.ai_catalog import CatalogError
from addons.rules.ai_catalog import ObservedHosts
from addons.rules.ai_catalog import expand
from addons.rules.ai_catalog import host_matches
from addons.rules.ai_catalog import load_catalog
from addons.rules.ai_catalog import markdown_table
from addons.rules.ai_catalog import parse_catalog
from tests.support import ROOT

RAW = yaml.safe_load(CATALOG_FILE.read_text())
PROMISED = {
    # the tools no gateway can serve, named by the issue, and the rest of its list
    "cursor", "windsurf", "amp", "kiro", "antigravity", "gemini-cli",
    "copilot", "jetbrains-ai", "tabnine", "codeium", "cody", "amazon-q", "gemini-code-assist",
    "mistral", "groq", "together", "perplexity", "huggingface",
    "mcp",  # the well-known remote MCP servers (`egress.deny_hosts: [mcp]`)
}  # fmt: skip


def test_the_catalog_file_is_valid_and_holds_every_promised_entry():
    catalog = load_catalog()
    assert PROMISED <= set(catalog.entries)
    for entry in catalog.entries.values():
        assert entry.hosts or entry.uses  # an entry of uses alone groups others
        assert all(h.source.startswith("https://") for h in entry.hosts)
    mcp = catalog.hosts_of("mcp")
    assert "mcp.linear.app" in mcp and all(catalog.owner(h).kind == "mcp-server" for h in mcp)


def test_no_host_is_listed_twice():
    hosts = [h["host"] for e in RAW.values() for h in e.get("hosts", [])]
    assert len(hosts) == len(set(hosts))


def broken(change) -> dict:
    raw = copy.deepcopy(RAW)
    change(raw)
    return raw


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["kiro"]["hosts"].append(dict(r["cursor"]["hosts"][0])),
         "host *.cursor.sh is already in 'cursor'"),
        (lambda r: r["cursor"]["hosts"][0].pop("source"), "needs exactly host, role, source"),
        (lambda r: r["cursor"]["hosts"][0].update(source="see the forum"), "needs a source"),
        (lambda r: r["cursor"]["hosts"][0].update(role="ads"), "has role 'ads'"),
        (lambda r: r["cursor"]["hosts"][0].update(host="cursor.*.sh"), "is not a host name"),
        (lambda r: r["cursor"]["hosts"][0].update(confirmed="yes"), "confirmed must be"),
        (lambda r: r["kiro"].update(uses=["amazon-r"]), "uses unknown entry 'amazon-r'"),
        (lambda r: r["kiro"].update(kind="app"), "kind must be one of"),
        (lambda r: r["kiro"].update(hosts=[]), "needs at least one host"),
        (lambda r: r.update({"Bad.Id": r["kiro"]}), "ids are lower-case"),
    ],
)  # fmt: skip
def test_a_broken_catalog_is_refused_naming_the_entry(change, message):
    with pytest.raises(CatalogError, match=re.escape(message)):
        parse_catalog(broken(change))


def test_entries_expand_to_their_hosts_and_those_they_use():
    catalog = load_catalog()
    kiro = expand(["kiro"], catalog)
    assert ("*.kiro.dev", "kiro") in kiro
    assert ("codewhisperer.us-east-1.amazonaws.com", "kiro") in kiro  # through amazon-q
    assert expand(["*.Example.com", "", "localhost"], catalog) == [
        ("*.example.com", None), ("localhost", None),
    ]  # fmt: skip
    with pytest.raises(CatalogError, match="'cursr' is not in the AI host catalog .*'cursor'"):
        expand(["cursr"], catalog)


def test_owner_and_observed_lookup_prefer_exact_then_the_longest_suffix():
    catalog = load_catalog()
    assert catalog.owner("agent.api5.cursor.sh").id == "cursor"
    assert catalog.owner("cody-gateway.sourcegraph.com").id == "cody"
    assert catalog.owner("example.com") is None
    observed = ObservedHosts(["cursor", "exact.cursor.sh", "*.b.cursor.sh"])
    assert observed.lookup("EXACT.cursor.sh.").pattern == "exact.cursor.sh"
    assert observed.lookup("x.b.cursor.sh").pattern == "*.b.cursor.sh"
    assert observed.lookup("a.cursor.sh").entry == "cursor"
    assert observed.lookup("cursor.sh") is None and observed.lookup("cursor.example") is None
    for bad in ("*.*.example.com", "*.sh", "10.0.0.1", "exa mple.com"):
        with pytest.raises(CatalogError, match="neither a catalog entry nor a host"):
            ObservedHosts([bad])


def test_suffix_patterns_match_names_under_the_suffix_only():
    assert host_matches("*.cursor.sh", "a.b.cursor.sh")
    assert not host_matches("*.cursor.sh", "cursor.sh")
    assert not host_matches("*.cursor.sh", "evilcursor.sh")


def test_the_manuals_table_is_made_from_the_catalog():
    from proxy.devtools.manual import CATALOG_MARKER
    from proxy.devtools.manual import on_page_markdown

    page = (ROOT / "docs" / "routing" / "observing.md").read_text()
    assert page.count(CATALOG_MARKER) == 1
    built = on_page_markdown(page)
    assert markdown_table() in built and CATALOG_MARKER not in built
