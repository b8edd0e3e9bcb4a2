"""The command line as an operator uses it: errors are one line and exit 2, `ca init`/`ca show`
do what they print, `serve` uses or creates the CA, and the addons run in stock mitmdump."""

from __future__ import annotations

import datetime
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authority import CertificateAuthority
from certs.authority import generate_ca
from certs.authority import key_pem
from tests.support import ALICE
from tests.support import ROOT
from tests.support import assert_one_line_error
from tests.support import base_env
from tests.support import cli
from tests.support import free_port


@pytest.mark.parametrize(
    "args, env, fragments",
    [
        (["serve"], {}, ["gateway: not set; pass --gateway"]),
        (
            ["serve", "--gateway", "ftp://x"],
            {},
            ["gateway: 'ftp://x' from flag --gateway", "https://"],
        ),
        (
            ["serve", "--gateway", "https://c.example.com"],
            {"AIBRIDGE_PROXY_AUTH_MODE": "sometimes"},
            ["auth.mode: 'sometimes' from environment variable AIBRIDGE_PROXY_AUTH_MODE"],
        ),
        (
            ["serve", "--gateway", "https://c.example.com", "--listen", "localhost"],
            {},
            ["listen: 'localhost' from flag --listen must be host:port"],
        ),
        (
            ["serve", "--gateway", "https://c.example.com", "--provider", "*.com=x"],
            {},
            ["wildcard"],
        ),
        (
            ["serve", "--config", "/nonexistent/config.yaml"],
            {},
            ["cannot read config file /nonexistent/config.yaml"],
        ),
    ],
)
def test_configuration_errors(args, env, fragments):
    assert_one_line_error(cli(*args, env=env), *fragments)


def test_unknown_key_in_config_file(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("gateway: https://c.example.com\nlisten_addr: ':8888'\n")
    assert_one_line_error(
        cli("serve", "--config", str(cfg)), f"unknown setting 'listen_addr' in config file {cfg}"
    )


def serve_on(state_dir, listen: str, *more: str):
    """`serve` in the foreground with a gateway it never reaches: for start-up errors."""
    return cli("serve", "--gateway", "http://127.0.0.1:1", "--auth-mode", "presence",
               "--state-dir", str(state_dir), "--listen", listen, *more)  # fmt: skip


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = serve_on(tmp_path, f"127.0.0.1:{port}")
    assert_one_line_error(r, f"listen: cannot bind 127.0.0.1:{port}")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_admin_port_in_use_stops_before_the_proxy_accepts(tmp_path, workers):
    """A taken admin port is one line and exit 2, no traceback; and the main listener never
    accepted a client in the meantime (it would have reset it)."""
    import threading

    main_port = free_port()
    accepted = []
    done = threading.Event()

    def probe():
        while not done.is_set():
            with socket.socket() as c:
                c.settimeout(0.2)
                if c.connect_ex(("127.0.0.1", main_port)) == 0:
                    accepted.append(time.monotonic())
            time.sleep(0.002)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        admin_port = s.getsockname()[1]
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            r = serve_on(tmp_path, f"127.0.0.1:{main_port}",
                         "--admin-listen", f"127.0.0.1:{admin_port}", "--workers", workers)  # fmt: skip
        finally:
            done.set()
            prober.join()
    assert_one_line_error(r, f"admin.listen: cannot bind 127.0.0.1:{admin_port}")
    assert "Exception ignored" not in r.stderr and "RuntimeError" not in r.stderr
    assert accepted == []


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("https://api.openai.com:99999/v1/chat/completions", "is not a port (1-65535)"),
        ("api.openai.com/v1/chat/completions", "is not a URL like https://host/path"),
        ("https://api.openai.com:9\x1b[31m/v1", "\\x1b[31m"),
    ],
)
def test_explain_takes_a_bad_url_in_one_escaped_line(url, fragment):
    r = cli("explain", "--gateway", "https://coder.example.com", url)
    assert_one_line_error(r, fragment)
    assert "\x1b" not in r.stderr


@pytest.mark.parametrize(
    "path, answer",
    [
        ("/v1/../v1/chat/completions", "400 the path holds . or .. segments"),
        ("/v1/%2e%2e/x", "400 the path holds . or .. segments"),
        ("/v1/audio%2Fspeech", "400 the path holds an encoded slash"),
        ("/v1/chat\x1b[2J", "400 the request target holds spaces, control"),
    ],
)
def test_explain_says_the_proxy_refuses_what_it_refuses(path, answer):
    r = cli("explain", "--gateway", "https://coder.example.com", f"https://api.openai.com{path}")
    assert r.returncode == 0, r.stderr
    assert answer in r.stdout and "\x1b" not in r.stdout


def test_ca_init_and_show(tmp_path):
    r = cli("ca", "init", "--state-dir", str(tmp_path), "--provider", "*.openai.azure.com=azure")
    assert r.returncode == 0, r.stderr
    key = tmp_path / "ca-key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    fp = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    assert f"SHA-256:        {fp}" in r.stdout
    assert str(tmp_path / "ca.pem") in r.stdout
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert "openai.azure.com" in [n.value for n in nc.permitted_subtrees]
    # no overwrite without --force
    assert_one_line_error(
        cli("ca", "init", "--state-dir", str(tmp_path)), "already exists; pass --force"
    )
    r = cli(
        "ca",
        "init",
        "--state-dir",
        str(tmp_path),
        "--force",
        "--key-type",
        "rsa",
        "--common-name",
        "Acme",
        "--days",
        "90",
        "--unconstrained",
    )
    assert r.returncode == 0 and "no name constraints" in r.stderr
    r = cli("ca", "show", "--state-dir", str(tmp_path), "--proxy-url", "http://coder:$T@proxy:8888")
    assert r.returncode == 0, r.stderr
    assert "Subject:     O=aibridge-proxy,CN=Acme" in r.stdout
    assert re.search(r"Not after:   \d{4}-\d\d-\d\d", r.stdout)
    assert 'export HTTPS_PROXY="http://coder:$T@proxy:8888"' in r.stdout
    assert f'export SSL_CERT_FILE="{tmp_path / "ca-bundle.pem"}"' in r.stdout
    assert f'export NODE_EXTRA_CA_CERTS="{tmp_path / "ca.pem"}"' in r.stdout


def test_serve_generates_ca_and_logs_where(make_proxy):
    p = make_proxy()
    line = p.wait_for_line(lambda r: r.get("msg") == "generated a new CA")
    assert line["cert"] == str(p.ca_path)
    assert stat.S_IMODE(os.stat(p.state_dir / "ca-key.pem").st_mode) == 0o600


def test_serve_refuses_group_readable_key(make_proxy, tmp_path):
    p = make_proxy()
    p.stop()
    os.chmod(p.state_dir / "ca-key.pem", 0o644)
    r = cli(
        "serve",
        "--gateway",
        "http://127.0.0.1:1",
        "--state-dir",
        str(p.state_dir),
        "--listen",
        "127.0.0.1:0",
    )
    assert_one_line_error(
        r, "readable by group or others", f"chmod 600 {p.state_dir / 'ca-key.pem'}"
    )


def _intermediate_from_company_pki(tmp_path) -> tuple:
    """A root (trusted by clients) and an intermediate it issued for the proxy, with the key
    identifiers a real PKI sets (Python 3.13's clients verify strictly and require them)."""
    root = generate_ca("Company Root", 365, permitted_domains=None)
    key = ec.generate_private_key(ec.SECP256R1())
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root.key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    inter = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "AI proxy intermediate")])
        )
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), False
        )
        .sign(root.key, hashes.SHA256())
    )
    # pathlen 0 on the root would forbid an intermediate; re-sign the root without it
    root_cert = (
        x509.CertificateBuilder()
        .subject_name(root.cert.subject)
        .issuer_name(root.cert.subject)
        .public_key(root.key.public_key())
        .serial_number(root.cert.serial_number)
        .not_valid_before(root.cert.not_valid_before_utc)
        .not_valid_after(root.cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(root_ski, False)
        .sign(root.key, hashes.SHA256())
    )
    root = CertificateAuthority(root_cert, root.key)
    chain_file = tmp_path / "intermediate-chain.pem"
    chain_file.write_bytes(inter.public_bytes(serialization.Encoding.PEM) + root.cert_pem())
    key_file = tmp_path / "intermediate.key"
    key_file.write_bytes(key_pem(key))
    os.chmod(key_file, 0o600)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(root.cert_pem())
    return chain_file, key_file, root_file


def test_bring_your_own_intermediate(make_proxy, gateway, tmp_path):
    chain_file, key_file, root_file = _intermediate_from_company_pki(tmp_path)
    p = make_proxy("--ca-cert-file", str(chain_file), "--ca-key-file", str(key_file))
    ctx = ssl.create_default_context(cafile=str(root_file))  # clients trust only the company root
    with httpx.Client(proxy=p.url(ALICE), verify=ctx, trust_env=False) as c:
        assert c.get("https://api.openai.com/v1/models").status_code == 200
    assert gateway.last().path == "/api/v2/aibridge/openai/v1/models"


@contextmanager
def stock_mitmdump(tmp_path, *settings: str):
    """mitmdump with our entry file, as an admin debugging flows would run it; yields the port."""
    mitmdump = os.path.join(os.path.dirname(sys.executable), "mitmdump")
    port = free_port()
    cmd = [
        mitmdump,
        "-q",
        "-s",
        str(ROOT / "addons" / "mitmdump_entry.py"),
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={tmp_path}",
    ]
    for setting in settings:
        cmd += ["--set", setting]
    proc = subprocess.Popen(
        cmd, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, "mitmdump exited"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_addons_load_in_stock_mitmdump(gateway, tmp_path):
    with stock_mitmdump(
        tmp_path, f"aibridge_gateway={gateway.url}", "aibridge_auth_mode=presence"
    ) as port:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "mitmproxy-ca-cert.pem"))
        with httpx.Client(
            proxy=f"http://u:{ALICE}@127.0.0.1:{port}", verify=ctx, trust_env=False
        ) as c:
            r = c.post(
                "https://api.anthropic.com/v1/messages",
                json={"model": "m", "max_tokens": 1, "messages": []},
            )
    assert r.status_code == 200
    rec = gateway.last()
    assert rec.path == "/api/v2/aibridge/anthropic/v1/messages"
    assert rec.header("X-Coder-AI-Governance-Token") == ALICE


def test_demo_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "demo"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for provider in ("openai", "anthropic"):
        assert re.search(
            rf"->\s+http://127\.0\.0\.1:\d+/api/v2/aibridge/{provider}/v1/\S+\s+{provider}\s+200",
            r.stdout,
        ), r.stdout
    assert "export HTTPS_PROXY=" in r.stdout


def test_ca_expiring_soon_is_warned_at_start(make_proxy, tmp_path):
    state = tmp_path / "state"
    assert cli("ca", "init", "--state-dir", str(state), "--days", "10").returncode == 0
    p = make_proxy(state_dir=state)
    line = p.wait_for_line(
        lambda r: r.get("level") == "warning" and "expires on" in r.get("msg", "")
    )
    assert "days left" in line["msg"]


def test_serve_warns_about_hosts_outside_the_constraints(make_proxy, tmp_path):
    state = tmp_path / "state"
    assert cli("ca", "init", "--state-dir", str(state)).returncode == 0
    p = make_proxy("--provider-presets", "xai", state_dir=state)
    line = p.wait_for_line(lambda r: "outside the CA's name constraints" in r.get("msg", ""))
    assert "api.x.ai" in line["msg"] and "ca init --force" in line["msg"]


def test_mitmdump_without_a_gateway_answers_502(tmp_path):
    """The addons alone, misconfigured: a clear 502, not an engine error."""
    with stock_mitmdump(tmp_path, "aibridge_auth_mode=presence") as port:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "mitmproxy-ca-cert.pem"))
        with httpx.Client(
            proxy=f"http://u:{ALICE}@127.0.0.1:{port}", verify=ctx, trust_env=False
        ) as c:
            r = c.get("https://api.openai.com/v1/models")
    assert r.status_code == 502 and "no gateway is configured" in r.text


def test_serve_warns_loudly_with_an_unconstrained_ca(make_proxy, tmp_path):
    state = tmp_path / "state"
    assert cli("ca", "init", "--state-dir", str(state), "--unconstrained").returncode == 0
    p = make_proxy(state_dir=state)
    line = p.wait_for_line(lambda r: "NO NAME CONSTRAINTS" in r.get("msg", ""))
    assert line["level"] == "warning" and "ca init --force" in line["msg"]


def test_env_tool_prints_exactly_what_the_developer_page_shows(tmp_path):
    """One source for both: `aibridge-proxy env --tool` and the page call render_tool."""

    from addons.developer.client_env import TOOLS
    from addons.developer.client_env import ClientEnv
    from addons.developer.client_env import render_tool
    from certs.authority import generate_ca

    ca = tmp_path / "ca.pem"
    ca.write_bytes(generate_ca("t", 30, permitted_domains=["example.com"]).cert_pem())
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"")
    url = "http://ws:$CODER_SESSION_TOKEN@proxy.example.com:8888"
    env = ClientEnv(url, ca.resolve(), bundle.resolve())
    for tool in TOOLS:
        for shell in ("bash", "fish", "powershell"):
            r = cli("env", "--proxy-url", url, "--ca", str(ca), "--bundle", str(bundle),
                    "--tool", tool.id, "--shell", shell)  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert r.stdout == render_tool(env, tool.id, shell), (tool.id, shell)
    assert_one_line_error(
        cli("env", "--proxy-url", url, "--ca", str(ca), "--tool", "emacs"), "--tool 'emacs'"
    )


@pytest.mark.parametrize("url", ["", "   ", "proxy.example.com:8888", "ftp://p:21", "http://",
                                 "http://p.example.com:port"])  # fmt: skip
def test_env_refuses_a_proxy_url_that_is_not_one(tmp_path, url):
    from certs.authority import generate_ca

    ca = tmp_path / "ca.pem"
    ca.write_bytes(generate_ca().cert_pem())
    result = cli("env", "--proxy-url", url, "--ca", str(ca))
    assert_one_line_error(result, "--proxy-url", "http://coder:$CODER_SESSION_TOKEN@")
    assert "export" not in result.stdout


def test_mcp_accept_approves_a_servers_changed_tools(tmp_path):
    from addons.govern.mcp_pins import PINS_FILE
    from addons.govern.mcp_pins import PinBook

    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path}\nmcp:\n  - {{name: github, url: 'https://mcp.example.com/mcp'}}\n"
    )
    book = PinBook(tmp_path / PINS_FILE)
    book.observe("github", [{"name": "search", "description": "old"}])
    book.observe("github", [{"name": "search", "description": "new"}])
    r = cli("mcp", "pins", "--config", str(cfg))
    assert r.returncode == 0 and "github: 1 tools pinned; changed: search" in r.stdout, r.stderr
    r = cli("mcp", "accept", "github", "--config", str(cfg))
    assert r.returncode == 0 and "accepted the new definitions of search" in r.stdout, r.stderr
    assert not PinBook(tmp_path / PINS_FILE).held("github", "search")
    assert (
        "no changed tool definition" in cli("mcp", "accept", "github", "--config", str(cfg)).stdout
    )
    assert_one_line_error(cli("mcp", "accept", "gitlab", "--config", str(cfg)),
                          "no MCP server entry is named 'gitlab'")  # fmt: skip
