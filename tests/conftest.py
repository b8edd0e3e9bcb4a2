"""Shared fixtures: one local gateway and one proxy for the session, plus factories for tests
that need their own configuration."""

from __future__ import annotations

import os

import pytest

from tests.support import LOOPBACK_INTERNET
from tests.support import ProxyProcess
from tests.support import ThreadedGateway
from tests.support import TlsOrigin


@pytest.fixture(scope="session")
def gateway_server():
    gw = ThreadedGateway().start()
    yield gw
    gw.stop()


@pytest.fixture
def gateway(gateway_server):
    """The session's local gateway, with an empty record of requests."""
    gateway_server.records.clear()
    gateway_server.gateway.websocket_closes.clear()
    gateway_server.gateway.websocket_messages.clear()
    gateway_server.gateway.fail_users_me = None
    return gateway_server


@pytest.fixture(scope="session")
def proxy(gateway_server, tmp_path_factory):
    """The real proxy, default settings, routing to the local gateway."""
    # Failure throttling is off here: many tests fail authentication on purpose from 127.0.0.1.
    # Loopback stands in for "the internet" (test origins), so it is allowed, on any port.
    args = ["--gateway", gateway_server.url, "--auth-max-failures", "0", *LOOPBACK_INTERNET]
    p = ProxyProcess(tmp_path_factory.mktemp("proxy"), args).start()
    yield p
    p.stop()


@pytest.fixture
def make_proxy(tmp_path, gateway_server):
    """Start a proxy with extra arguments; stopped at the end of the test."""
    started: list[ProxyProcess] = []

    def make(*args: str, gateway: str | None = None, env=None, state_dir=None) -> ProxyProcess:
        gw_args = ["--gateway", gateway or gateway_server.url] if gateway != "" else []
        state = state_dir or tmp_path / f"proxy{len(started)}"
        p = ProxyProcess(state, [*gw_args, *args], env=env).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def configured_proxy(tmp_path, gateway_server):
    """Start a proxy from a configuration file holding `config` (the local gateway unless it
    names one); stopped at the end of the test."""
    import yaml

    started: list[ProxyProcess] = []

    def start(config: dict) -> ProxyProcess:
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(yaml.safe_dump({"gateway": gateway_server.url, **config}))
        p = ProxyProcess(tmp_path / f"state-{len(started)}", ["--config", str(path)]).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def origin(tmp_path):
    """A TLS server on its own CA: a stand-in for a non-provider site on the internet."""
    o = TlsOrigin().start(tmp_path)
    yield o
    o.stop()


# Skips that say something about this machine rather than a missing install step.
ENVIRONMENT_FACTS = ("this OpenSSL cannot",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test fails: the set-up installs every component the tests
    drive (squid, the KDC, chromium, certutil, redis-server, node, prlimit, root...), so a
    skip there means an install step is missing, and a green run must not hide it."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(ENVIRONMENT_FACTS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where the set-up installs what it needs: {reason}"
