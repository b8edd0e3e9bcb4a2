"""HookTable dispatches hooks as mitmproxy's AddonManager does, from a table."""

from __future__ import annotations

import logging

import pytest
from mitmproxy import addonmanager
from mitmproxy import exceptions
from mitmproxy import hooks
from mitmproxy import master
from mitmproxy import options
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import tflow

from addons.engine.hook_table import HookTable


class Recorder:
    def __init__(self, name: str, calls: list, children: list | None = None) -> None:
        self.name = name
        self.calls = calls
        if children is not None:
            self.addons = children

    def requestheaders(self, flow) -> None:
        self.calls.append((self.name, "requestheaders"))

    def response(self, flow) -> None:
        self.calls.append((self.name, "response"))


class AsyncRecorder(Recorder):
    async def requestheaders(self, flow) -> None:
        self.calls.append((self.name, "requestheaders"))


class Failing(Recorder):
    def requestheaders(self, flow) -> None:
        raise ValueError("boom")


class Halting(Recorder):
    def response(self, flow) -> None:
        self.calls.append((self.name, "response"))
        raise exceptions.AddonHalt


class Updates(Recorder):
    def update(self, flows) -> None:
        self.calls.append((self.name, f"update {len(flows)}"))


class Strict:
    def load(self, loader) -> None:
        loader.add_option("strict_value", int, 1, "must stay below 10")

    def configure(self, updated) -> None:
        from mitmproxy import ctx

        if "strict_value" in updated and ctx.options.strict_value >= 10:
            raise exceptions.OptionsError("strict_value must stay below 10")


def chain(calls: list) -> list:
    return [
        Recorder("a", calls),
        AsyncRecorder("b", calls, children=[Recorder("b.child", calls)]),
        Halting("c", calls),
        Recorder("d", calls),
    ]


async def dispatch(manager: addonmanager.AddonManager) -> None:
    flow = tflow.tflow()
    await manager.handle_lifecycle(http_layer.HttpRequestHeadersHook(flow))
    await manager.handle_lifecycle(http_layer.HttpResponseHook(flow))


def engine(table: bool) -> master.Master:
    m = master.Master(options.Options())
    m._legacy_log_events.uninstall()
    if table:
        HookTable.install(m)
    return m


async def test_the_same_calls_in_the_same_order_as_mitmproxys_manager():
    seen = {}
    for table in (False, True):
        calls: list = []
        m = engine(table)
        m.addons.add(*chain(calls))
        await dispatch(m.addons)
        seen[table] = calls
    assert (
        seen[True]
        == seen[False]
        == [
            ("a", "requestheaders"),
            ("b", "requestheaders"),
            ("b.child", "requestheaders"),
            ("c", "requestheaders"),
            ("d", "requestheaders"),
            ("a", "response"),
            ("b", "response"),
            ("b.child", "response"),
            ("c", "response"),  # AddonHalt: d never sees the response
        ]
    )


async def test_a_failing_handler_is_logged_and_the_next_one_runs(caplog):
    calls: list = []
    m = engine(True)
    m.addons.add(Failing("x", calls), Recorder("y", calls))
    with caplog.at_level(logging.ERROR, "mitmproxy.addonmanager"):
        await m.addons.handle_lifecycle(http_layer.HttpRequestHeadersHook(tflow.tflow()))
    assert calls == [("y", "requestheaders")]
    assert "Addon error: boom" in caplog.text


async def test_update_runs_after_flow_hooks_only_when_an_addon_has_it():
    calls: list = []
    m = engine(True)
    m.addons.add(Recorder("a", calls))
    await dispatch(m.addons)
    assert m.addons.handlers("update") == ()
    m.addons.add(Updates("u", calls))  # the table follows the chain
    calls.clear()
    await m.addons.handle_lifecycle(http_layer.HttpResponseHook(tflow.tflow()))
    assert calls == [("a", "response"), ("u", "response"), ("u", "update 1")]
    m.addons.remove(m.addons.get("u"))
    assert m.addons.handlers("update") == ()


async def test_options_errors_reach_the_setter_and_sync_hooks_refuse_async_handlers():
    m = engine(True)
    m.addons.add(Strict())
    with pytest.raises(exceptions.OptionsError, match="below 10"):
        m.options.update(strict_value=12)
    assert m.options.strict_value == 1

    class AsyncConfigure:
        async def configure(self, updated) -> None:
            pass

    m.addons.add(AsyncConfigure())
    with pytest.raises(exceptions.AddonManagerError, match="sync context"):
        m.addons.trigger(hooks.ConfigureHook(set()))


async def test_installed_only_on_an_empty_master():
    m = engine(False)
    m.addons.add(Recorder("a", []))
    with pytest.raises(RuntimeError, match="before addons"):
        HookTable.install(m)
