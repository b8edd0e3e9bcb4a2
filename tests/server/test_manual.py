"""The manual's generated parts: the configuration reference has one row per declared setting,
spelt as the program reads it, and the reference page asks for it."""

from __future__ import annotations

import argparse

from proxy.command_args import add_setting_flags
from proxy.devtools.manual import SETTINGS_MARKER
from proxy.devtools.manual import on_page_markdown
from proxy.devtools.manual import settings_table
from proxy.server.settings import FIELDS
from tests.support import ROOT


def test_one_row_per_setting_with_its_key_variable_and_flag():
    rows = settings_table().splitlines()[2:]
    assert len(rows) == len(FIELDS)
    for field, row in zip(FIELDS, rows, strict=True):
        assert row.startswith(f"| `{field.key}`<br>`{field.env}`<br>`{field.flag}` |"), row


def test_every_flag_in_the_table_is_one_serve_accepts():
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    accepted = {s for a in parser._actions for s in a.option_strings}
    assert {f.flag for f in FIELDS} <= accepted
    assert next(f.flag for f in FIELDS if f.key == "providers") == "--provider"


def test_the_reference_page_is_filled_in():
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    assert page.count(SETTINGS_MARKER) == 1
    built = on_page_markdown(page)
    assert SETTINGS_MARKER not in built and "`AIBRIDGE_PROXY_DLP_ACTION`" in built
