"""The parts of the manual (docs/, built with MkDocs) that are made from the program, so they
cannot drift from it: the configuration reference from each setting's one declaration, and the
AI host catalog's table from its data file. MkDocs loads this file as a hook (mkdocs.yml)."""

from __future__ import annotations

from typing import Any

from addons.rules.ai_catalog import markdown_table
from proxy.server.settings.fields import FIELDS
from proxy.server.settings.fields import Field

SETTINGS_MARKER = "<!-- settings:table -->"
CATALOG_MARKER = "<!-- catalog:table -->"


def _default(value: Any) -> str:
    if value is None or value == () or value == "":
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return f"`{','.join(str(v) for v in value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_row(field: Field) -> str:
    names = f"`{field.key}`<br>`{field.env}`<br>`{field.flag}`"
    return f"| {names} | {_default(field.default)} | {_cell(field.help)} |"


def settings_table() -> str:
    """One row per setting: its YAML key, environment variable and flag, default and help."""
    rows = [settings_row(f) for f in FIELDS]
    return "\n".join(
        ["| setting (YAML, environment, flag) | default | meaning |", "|---|---|---|", *rows]
    )


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: fill in the generated tables where a page asks for them."""
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if CATALOG_MARKER in markdown:
        markdown = markdown.replace(CATALOG_MARKER, markdown_table())
    return markdown
