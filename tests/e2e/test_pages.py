"""The developer page and the admin page, in a real browser (Debian's chromium): the browser
uses the proxy with the developer's credentials, and trusts the proxy's CA, or not. Every
state is saved as a screenshot in .artifacts/pages/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from addons.developer.client_env import ClientEnv
from addons.developer.client_env import render_tool
from addons.developer.pages import client_files
from addons.developer.verdicts import BROWSER_UNTRUSTED
from addons.developer.verdicts import CONNECT_VERDICTS
from tests.support import ALICE
from tests.support import BOB
from tests.support import ProxyProcess
from tests.support import browser as browsers
from tests.support import proxy_client

pytestmark = pytest.mark.skipif(
    not browsers.available(), reason="needs chromium, certutil (libnss3-tools) and playwright"
)
PAGE = "http://aibridge-proxy.internal/"
WINDOWS_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def paged(gateway_server, tmp_path_factory):
    """A proxy with two routing profiles: `direct` (the default: openai) and `fast` (the same
    host to the gateway's openrouter provider)."""
    state = tmp_path_factory.mktemp("pages")
    config = {
        "gateway": gateway_server.url,
        "profiles": {
            "direct": [{"name": "to-openai", "match": {"host": ["api.openai.com"]},
                        "route": {"provider": "openai"}}],
            "fast": [{"name": "to-openrouter", "match": {"host": ["api.openai.com"]},
                      "route": {"provider": "openrouter"}}],
        },
        "default_profile": "direct",
        "auth": {"max_failures": 0},
        # prompt DLP: flagged everywhere, blocked by a rule on the Responses API
        "dlp": {"action": "flag"},
        "rules": [{"name": "responses-dlp", "match": {"path": ["/v1/responses"]},
                   "route": {"provider": "openai"}, "dlp": "block"}],
    }  # fmt: skip
    (state / "config.yaml").write_text(yaml.safe_dump(config))
    p = ProxyProcess(state / "state", ["--config", str(state / "config.yaml")]).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def chromium(playwright, paged, tmp_path_factory):
    """Launch chromium with a HOME whose trust store holds the proxy's CA (trusted=True) or
    not; one browser per kind for the module."""
    launched = {}
    tmp = tmp_path_factory.mktemp("browsers")

    def launch(trusted: bool):
        if trusted not in launched:
            home = browsers.browser_home(tmp, paged.ca_path if trusted else None)
            launched[trusted] = playwright.chromium.launch(
                executable_path=browsers.CHROMIUM,
                headless=True,
                env={**os.environ, "HOME": str(home)},
                args=["--no-sandbox", "--disable-gpu"],
            )
        return launched[trusted]

    yield launch
    for b in launched.values():
        b.close()


def open_page(chromium, proxy, token=ALICE, user="coder", trusted=True, **context):
    browser = chromium(trusted)
    ctx = browser.new_context(
        proxy={"server": f"http://127.0.0.1:{proxy.port}", "username": user, "password": token},
        **context,
    )
    page = ctx.new_page()
    return ctx, page


def test_the_page_loads_through_the_proxy_with_the_developers_identity(chromium, paged):
    ctx, page = open_page(chromium, paged, user="alice-ws")
    fetched = []
    page.on("request", lambda r: fetched.append(r.url))
    try:
        response = page.goto(PAGE)
        assert response.status == 200
        assert fetched == [PAGE]  # one document, nothing from anywhere else
        assert page.locator("#identity").inner_text() == (
            "Signed in to the proxy as alice (workspace alice-ws)."
        )
        assert page.title() == "aibridge-proxy: set up this machine"
        assert page.locator("#fingerprint").inner_text().count(":") == 31
        # Linux (this browser's User-Agent): bash lines, Debian and Fedora steps
        env = ClientEnv(
            f"http://alice-ws:$CODER_SESSION_TOKEN@127.0.0.1:{paged.port}",
            *map(Path, client_files("linux")),
        )
        for tool in ("claude-code", "codex", "python", "copilot-vscode", "curl"):
            shown = page.locator(f"#lines-{tool}").text_content()
            assert shown == render_tool(env, tool, "bash"), tool
        assert "update-ca-certificates" in page.locator("#trust").text_content()
        assert ALICE not in page.content()  # never the token
        page.locator("#tool-claude-code summary").click()
        page.locator("#tool-claude-code button.copy").click()
        assert page.locator("#tool-claude-code button.copy").inner_text() == "Copied"
        # what the clipboard holds, read by a page in a secure context (the admin listener on
        # 127.0.0.1, reached directly; the reserved host is plain HTTP, where pages cannot)
        direct = ctx.browser.new_context()
        direct.grant_permissions(["clipboard-read", "clipboard-write"])
        reader = direct.new_page()
        reader.goto(f"http://127.0.0.1:{paged.admin_port}/healthz")
        copied = reader.evaluate("navigator.clipboard.readText()")
        assert copied == render_tool(env, "claude-code", "bash").rstrip("\n")  # a selection's text
        direct.close()
        browsers.screenshot(page, "developer-linux")
        # readable on a phone: nothing wider than the screen but the scrolling code blocks
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        browsers.screenshot(page, "developer-phone")
    finally:
        ctx.close()


def test_a_windows_browser_gets_powershell_and_the_windows_store(chromium, paged):
    ctx, page = open_page(chromium, paged, user_agent=WINDOWS_UA)
    try:
        page.goto(PAGE)
        env = ClientEnv(
            f"http://coder:$CODER_SESSION_TOKEN@127.0.0.1:{paged.port}",
            *map(Path, client_files("windows")),
        )
        assert page.locator("#lines-codex").text_content() == render_tool(
            env, "codex", "powershell"
        )
        assert "certutil -addstore -f Root" in page.locator("#trust").text_content()
        assert page.locator("#token-line").inner_text() == (
            '$env:CODER_SESSION_TOKEN = "<your token>"'
        )
        assert page.locator("nav.choices a[aria-current]").first.inner_text() == "Windows"
        browsers.screenshot(page, "developer-windows")
        # and the others are one link away
        page.get_by_role("link", name="macOS", exact=True).click()
        assert "security add-trusted-cert" in page.locator("#trust").text_content()
        page.get_by_role("link", name="fish", exact=True).click()
        assert page.locator("#lines-claude-code").text_content().startswith("set -gx HTTPS_PROXY")
    finally:
        ctx.close()


def test_the_check_succeeds_with_a_trusted_ca(chromium, paged, gateway):
    ctx, page = open_page(chromium, paged)
    try:
        page.goto(PAGE)
        page.get_by_role("button", name="Check my setup").focus()
        page.keyboard.press("Enter")  # the keyboard works the button
        result = page.locator("#check-result")
        result.filter(has_text="All set").wait_for()
        assert result.inner_text() == (
            "All set. this browser trusts the proxy's CA and reaches the proxy signed in as alice."
        )
        browsers.screenshot(page, "check-trusted")
        assert not any("aibridge-proxy/check" in r.path for r in gateway.records)  # ours only
    finally:
        ctx.close()


def test_the_check_names_the_fault_with_an_untrusted_ca(chromium, paged):
    ctx, page = open_page(chromium, paged, trusted=False)
    try:
        page.goto(PAGE)  # plain HTTP: the page loads without trusting anything
        page.get_by_role("button", name="Check my setup").click()
        result = page.locator("#check-result")
        result.filter(has_text="Problem").wait_for()
        assert result.inner_text() == (
            f"Problem: {BROWSER_UNTRUSTED.problem}.\nFix: {BROWSER_UNTRUSTED.fix}."
        )
        browsers.screenshot(page, "check-untrusted")
    finally:
        ctx.close()


def test_a_wrong_token_is_explained_in_doctors_words(chromium, paged):
    ctx, page = open_page(chromium, paged, token="tok-not-a-real-token")
    try:
        response = page.goto(PAGE)
        assert response.status == 200
        verdict = CONNECT_VERDICTS[407]
        assert page.locator("#identity").inner_text() == (
            f"Problem: {verdict.problem}.\nFix: {verdict.fix}."
        )
        assert page.get_by_role("button", name="Check my setup").count() == 0  # it cannot pass
        browsers.screenshot(page, "wrong-token")
    finally:
        ctx.close()


def test_my_recent_requests_are_mine_only(chromium, paged, gateway):
    with proxy_client(paged, ALICE, headers={"User-Agent": "claude-cli/2.1.0"}) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-recent"})
        assert r.status_code == 200
        assert c.get("https://api.openai.com/v1/no-such-route").status_code == 404
    ctx, page = open_page(chromium, paged)
    try:
        page.goto(PAGE)
        rows = page.locator("#recent tr").all_inner_texts()
        mine = [r for r in rows if "gpt-recent" in r]
        assert mine and "Claude Code" in mine[0] and "openai" in mine[0] and "200" in mine[0]
        assert "5 / 8" in mine[0]  # the local gateway's usage
        failed = rows.index(next(r for r in rows if "404" in r))
        assert rows[failed + 1].strip() == (
            "the gateway answered 404: see the tool's own error message"
        )
        browsers.screenshot(page, "recent-alice")
    finally:
        ctx.close()
    ctx, page = open_page(chromium, paged, token=BOB)
    try:
        page.goto(PAGE)
        assert "gpt-recent" not in page.locator("#recent").inner_text()
        browsers.screenshot(page, "recent-bob")
    finally:
        ctx.close()


def test_a_blocked_credential_is_explained_on_my_page_without_its_value(chromium, paged, gateway):
    token = "ghp_" + "Zx8Cv7Bn6Mm5Ll4Kk3Jj2Hh1Gg0Ff9Dd8Ss7A"  # generated, GitHub's format
    with proxy_client(paged, ALICE) as c:
        r = c.post("https://api.openai.com/v1/responses",
                   json={"model": "gpt-5", "input": [{"role": "user", "content": f"use {token}"}]})  # fmt: skip
        assert r.status_code == 400 and "a GitHub token in input[0]" in r.text
    ctx, page = open_page(chromium, paged)
    try:
        page.goto(PAGE)
        text = page.locator("#recent").inner_text()
        assert "blocked: a GitHub token in input[0]" in text
        assert "remove it, or use a placeholder" in text
        assert token not in page.content()
        browsers.screenshot(page, "recent-dlp-blocked")
    finally:
        ctx.close()


def test_the_profile_switch_changes_where_the_next_request_goes(chromium, paged, gateway):
    def next_request_path() -> str:
        with proxy_client(paged, ALICE, user="profiled") as c:
            assert c.post("https://api.openai.com/v1/chat/completions", json={}).status_code == 200
        return gateway.last().path

    assert next_request_path() == "/api/v2/aibridge/openai/v1/chat/completions"
    ctx, page = open_page(chromium, paged, user="profiled")
    try:
        page.goto(PAGE)
        assert page.locator("#active-profile").inner_text() == "direct"
        page.get_by_label("Switch to").select_option("fast")
        page.get_by_role("button", name="Switch").click()
        page.locator("#notice").wait_for()
        assert page.locator("#notice").inner_text() == "Switched to the profile fast."
        assert page.locator("#active-profile").inner_text() == "fast"
        browsers.screenshot(page, "profile-switched")
    finally:
        ctx.close()
    assert next_request_path() == "/api/v2/aibridge/openrouter/v1/chat/completions"


def test_a_form_post_from_another_site_cannot_switch_a_profile(chromium, paged):
    """Another page's form, posted with the developer's proxy credentials (a cross-site
    request forgery), is refused: only the developer page itself may switch."""
    ctx, page = open_page(chromium, paged, user="forged")
    try:
        page.set_content(
            f'<form method="post" action="{PAGE}profile"><input name="profile" value="fast"></form>'
        )
        with page.expect_navigation() as answer:
            page.evaluate("document.forms[0].submit()")
        assert answer.value.status == 403
        # nor a "simple" cross-site fetch with a JSON body (text/plain needs no preflight)
        status = page.evaluate(
            """fetch(%r, {method: "POST", mode: "no-cors", body: '{"profile": "fast"}'})
                 .then(() => "sent")"""
            % (PAGE + "profile")
        )
        assert status == "sent"
        page.goto(PAGE)
        assert page.locator("#active-profile").inner_text() == "direct"
    finally:
        ctx.close()


def test_the_ca_downloads_parse(chromium, paged, tmp_path):
    ctx, page = open_page(chromium, paged)
    try:
        page.goto(PAGE)
        with page.expect_download() as pem:
            page.locator("#ca-pem").click()
        with page.expect_download() as der:
            page.locator("#ca-der").click()
        pem_cert = x509.load_pem_x509_certificate(open(pem.value.path(), "rb").read())
        der_cert = x509.load_der_x509_certificate(open(der.value.path(), "rb").read())
        assert pem_cert == der_cert == x509.load_pem_x509_certificate(paged.ca_path.read_bytes())
        assert der.value.suggested_filename == "aibridge-proxy-ca.cer"
    finally:
        ctx.close()


def test_the_admin_page_on_the_admin_listener(chromium, paged):
    browser = chromium(True)
    ctx = browser.new_context()  # the admin listener is reached directly, not through the proxy
    try:
        page = ctx.new_page()
        response = page.goto(f"http://127.0.0.1:{paged.admin_port}/")
        assert response.status == 200
        ca = x509.load_pem_x509_certificate(paged.ca_path.read_bytes())
        from certs.authority import fingerprint

        assert page.locator("#admin-fingerprint").inner_text() == fingerprint(ca)
        assert "reachable" in page.locator("#gateways").inner_text()
        assert page.locator("#last-reload").inner_text() == "no reload since start"
        traffic = page.locator("#traffic").inner_text()  # the requests of the tests above
        assert "openai" in traffic and "openrouter" in traffic
        for link in ("/metrics", "/ca.pem", "/proxy.pac"):
            assert page.get_by_role("link", name=link).count() == 1
        # the setup part is there too, without anyone's identity
        assert page.locator("#lines-claude-code").count() == 1
        assert page.locator("#identity").count() == 0 and page.locator("#recent").count() == 0
        browsers.screenshot(page, "admin")
    finally:
        ctx.close()
