"""deploy/aibridge-proxy.service under a real systemd: a Debian 13 container booted with
systemd-nspawn, the wheel installed with Debian's own Python as the README says, and every
check made through systemctl and journalctl as an operator would."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import threading
import time

import httpx
import pytest

from tests.support import ALICE
from tests.support import TlsOrigin
from tests.support import free_port
from tests.support import frozen_versions
from tests.support import locked_versions
from tests.system.debian import DebianMachine
from tests.system.debian import require_tools
from tests.system.wheel import ROOT
from tests.system.wheel import build_wheel

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

UNIT = "aibridge-proxy"
STATE = "/var/lib/aibridge-proxy"


class Service:
    """The installed service as the host's clients see it."""

    def __init__(self, machine: DebianMachine, port: int, admin_port: int, gateway_url: str):
        self.machine, self.port, self.admin_port = machine, port, admin_port
        self.gateway_url = gateway_url

    def config(self, providers: str = "", extra: str = "") -> None:
        self.machine.path("/etc/aibridge-proxy/config.yaml").write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'gateway: "{self.gateway_url}"\n'
            f'admin:\n  listen: "127.0.0.1:{self.admin_port}"\n'
            # loopback stands in for the internet here (the tunnel's origin)
            'allowed_private_cidrs: "127.0.0.0/8"\nallowed_ports: "1-65535"\n'
            "log:\n  access_file: /var/log/aibridge-proxy/access.log\n"
            f"{providers}{extra}"
        )

    def systemctl(self, verb: str, check: bool = True):
        return self.machine.run(f"systemctl {verb} {UNIT}", check=check)

    def show(self, prop: str) -> str:
        return self.machine.run(f"systemctl show -P {prop} {UNIT}").stdout.strip()

    def client(self, **kw) -> httpx.Client:
        ca = httpx.get(f"http://127.0.0.1:{self.admin_port}/ca.pem", trust_env=False).text
        ctx = ssl.create_default_context(cadata=ca)
        for extra in kw.pop("extra_cas", ()):
            ctx.load_verify_locations(cadata=extra)
        url = f"http://coder:{ALICE}@127.0.0.1:{self.port}"
        return httpx.Client(proxy=url, verify=ctx, trust_env=False, timeout=20, **kw)

    def journal(self) -> str:
        return self.machine.run(f"journalctl -u {UNIT} --no-pager -o cat").stdout


@pytest.fixture(scope="module")
def service(tmp_path_factory, gateway_server):
    require_tools()
    tmp = tmp_path_factory.mktemp("debian")
    machine = DebianMachine(tmp / "root", f"abp-{free_port()}").boot()
    try:
        # the README's service installation, step by step
        wheel = build_wheel(tmp / "dist")
        shutil.copy(wheel, machine.path("/root"))
        shutil.copy(ROOT / "deploy" / "requirements.lock", machine.path("/root"))
        machine.run(
            "python3 -m venv /opt/aibridge-proxy"
            " && /opt/aibridge-proxy/bin/pip install --quiet --require-hashes --no-deps --only-binary=:all:"
            " -r /root/requirements.lock"
            f" && /opt/aibridge-proxy/bin/pip install --quiet --no-deps /root/{wheel.name}",
            timeout=600,
        )
        shutil.copy(ROOT / "deploy" / "aibridge-proxy.service", machine.path("/etc/systemd/system"))
        machine.path("/etc/aibridge-proxy").mkdir()
        # an operator's drop-in: a short watchdog, so that the hang test takes seconds
        dropin = machine.path(f"/etc/systemd/system/{UNIT}.service.d")
        dropin.mkdir(parents=True)
        (dropin / "watchdog.conf").write_text("[Service]\nWatchdogSec=4s\n")
        s = Service(machine, free_port(), free_port(), gateway_server.url)
        s.config()
        machine.run("systemctl daemon-reload")
        yield s
    finally:
        machine.shutdown()


def test_installed_with_debians_python(service):
    out = service.machine.run("/opt/aibridge-proxy/bin/aibridge-proxy --version").stdout
    assert out.startswith("aibridge-proxy 0.1.0 (mitmproxy 12.") and "Python 3.13." in out
    frozen = service.machine.run("/opt/aibridge-proxy/bin/pip freeze --all").stdout
    installed = frozen_versions(frozen)
    locked = locked_versions(ROOT / "deploy" / "requirements.lock")
    # exactly the lock's versions (the lock also pins other platforms' packages)
    assert installed.items() <= locked.items(), set(installed.items()) - set(locked.items())
    assert {"mitmproxy", "cryptography", "pyyaml", "aiohttp"} <= installed.keys()


def test_start_reaches_ready_and_serves(service, gateway):
    service.systemctl("start")  # Type=notify: returns once the service said READY=1
    assert service.show("ActiveState") == "active"
    assert service.show("StatusText") == f"proxy on 127.0.0.1:{service.port}"
    origin = TlsOrigin().start(service.machine.root.parent)
    try:
        with service.client(extra_cas=[origin.ca.cert_pem().decode()]) as c:
            r = c.post("https://api.openai.com/v1/chat/completions", json={"model": "m"})
            assert r.status_code == 200
            tunnelled = c.get(f"https://localhost:{origin.port}/t")
        assert tunnelled.text == "origin saw GET /t HTTP/1.1 body=0"
    finally:
        origin.stop()
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/chat/completions"


def test_ca_is_in_the_state_directory_of_the_dynamic_user(service):
    service.systemctl("start")
    pid = service.show("MainPID")
    uid = service.machine.run(f"stat -c %u /proc/{pid}").stdout.strip()
    assert uid not in ("0", "65534")  # a user of its own, allocated by systemd
    # seen from the service (systemd may id-map the directory): owned by it, private
    seen = service.machine.run(
        f"nsenter -t {pid} -U -m stat -L -c '%u %a %n' {STATE} {STATE}/ca.pem {STATE}/ca-key.pem"
    ).stdout.split("\n")
    assert seen[:3] == [
        f"{uid} 700 {STATE}",
        f"{uid} 644 {STATE}/ca.pem",
        f"{uid} 600 {STATE}/ca-key.pem",
    ]


def test_reload_applies_a_good_file_and_refuses_a_broken_one(service, gateway):
    service.systemctl("start")
    pid = service.show("MainPID")
    # a host inside the CA's name constraints (generated at first start for the routed ones)
    service.config(providers="providers:\n  api.openai.com: renamed\n")
    service.systemctl("reload")
    with service.client() as c:
        c.get("https://api.openai.com/v1/x")
    assert gateway.last().path == "/api/v2/aibridge/renamed/v1/x"

    service.machine.path("/etc/aibridge-proxy/config.yaml").write_text("providers: [[[\n")
    r = service.systemctl("reload", check=False)
    assert r.returncode != 0, r  # reported as a failed reload ...
    assert service.show("ActiveState") == "active" and service.show("MainPID") == pid
    with service.client() as c:  # ... while the old settings keep serving
        c.get("https://api.openai.com/v1/y")
    assert gateway.last().path == "/api/v2/aibridge/renamed/v1/y"
    assert "configuration reload rejected, keeping the old one" in service.journal()
    service.config()
    service.systemctl("reload")


def test_with_two_workers_a_reload_every_worker_refuses_is_a_failed_reload(service, gateway):
    """The supervisor checks the file and the CA; only a worker can judge a change that
    needs a restart, and `systemctl reload` must then fail with that worker's reason."""
    service.config(extra="workers: 2\n")
    service.systemctl("restart")
    try:
        service.config(providers="providers:\n  api.openai.com: two\n", extra="workers: 2\n")
        service.systemctl("reload")  # a good one: applied once both workers applied it
        for _ in range(6):  # new connections, spread over both workers
            with service.client() as c:
                c.get("https://api.openai.com/v1/x")
            assert gateway.last().path == "/api/v2/aibridge/two/v1/x"
        service.config(
            providers="providers:\n  api.openai.com: three\n",
            extra="workers: 2\nupstream_proxy: http://127.0.0.1:9\n",
        )
        r = service.systemctl("reload", check=False)
        assert r.returncode != 0, r
        journal = service.journal()
        assert "worker 0: upstream_proxy: changing it needs a restart" in journal
        assert "worker 1: upstream_proxy: changing it needs a restart" in journal
        with service.client() as c:
            c.get("https://api.openai.com/v1/y")
        assert gateway.last().path == "/api/v2/aibridge/two/v1/y"  # the old table serves
    finally:
        service.config()
        service.systemctl("restart")


def test_stop_drains_an_open_stream(service, gateway):
    service.systemctl("start")
    events: list[int] = []
    errors: list[str] = []

    def stream():
        try:
            with service.client() as c:
                url = "https://api.openai.com/_diag/sse?events=15&interval=0.2"
                with c.stream("GET", url) as s:
                    for line in s.iter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:])["i"])
        except Exception as e:  # reported below
            errors.append(repr(e))

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events, errors
    service.systemctl("stop")  # returns once the service has exited
    t.join(10)
    assert errors == [] and events == list(range(15))
    assert service.show("ActiveState") == "inactive"
    assert "stopping: draining connections" in service.journal()


def test_a_hung_service_is_restarted_by_the_watchdog(service):
    service.systemctl("start")
    pid = service.show("MainPID")
    restarts = int(service.show("NRestarts"))
    service.machine.run(f"kill -STOP {pid}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.show("MainPID") not in (pid, "0") and service.show("ActiveState") == "active":
            break
        time.sleep(0.3)
    assert int(service.show("NRestarts")) == restarts + 1
    assert "Watchdog timeout" in service.machine.run("journalctl --no-pager -o cat").stdout
    with service.client() as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200


def test_journal_holds_json_lines_and_no_token(service):
    service.systemctl("start")
    ours = [json.loads(line) for line in service.journal().splitlines() if line.startswith("{")]
    assert any(r.get("logger") == "aibridge.access" and r.get("user") == "alice" for r in ours)
    assert {"time", "level", "logger", "msg"} <= set(ours[0])
    assert ALICE not in service.machine.run("journalctl --no-pager -o export").stdout


def test_the_usage_report_reads_the_services_access_log(service):
    """The unit's LogsDirectory holds log.access_file; the operator's report reads it."""
    service.systemctl("start")
    with service.client() as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    report = service.machine.run(
        "/opt/aibridge-proxy/bin/aibridge-proxy usage --config /etc/aibridge-proxy/config.yaml"
        " --by user --format json"
    ).stdout
    rows = {(r["user"], r["traffic"]): r for r in json.loads(report)}
    assert rows["alice", "routed"]["requests"] >= 1


def test_the_services_open_file_limit_is_the_units(service):
    """LimitNOFILE= in the unit, and the soft limit the process itself runs with, agree (up to
    what the container is granted: systemd cannot give more than its own hard limit)."""
    import resource

    service.systemctl("start")
    assert service.show("LimitNOFILE") == "65536"
    granted = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    pid = service.show("MainPID")
    limits = service.machine.run(f"cat /proc/{pid}/limits").stdout
    assert re.search(rf"^Max open files\s+{granted}\s+{granted}\s", limits, re.M), limits
    lines = [json.loads(x) for x in service.journal().splitlines() if x.startswith("{")]
    assert any(r.get("msg") == "proxy listening" and r.get("open_files") == granted for r in lines)


def test_the_service_runs_optimised(service):
    """The unit sets PYTHONOPTIMIZE: mitmproxy's debug-only checks are off in the service."""
    service.systemctl("start")
    lines = [json.loads(x) for x in service.journal().splitlines() if x.startswith("{")]
    listening = [r for r in lines if r.get("msg") == "proxy listening"]
    assert listening and listening[-1]["optimized"] is True
