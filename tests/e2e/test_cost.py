"""What requests cost, end to end: the openai and anthropic SDKs (configured only by the
environment) through the proxy to the local gateway, each answer priced from the price
database or the admin's `prices:`, an unknown model counted as unpriced (never $0), and the
same numbers in the access line, the metrics and `aibridge-proxy usage`."""

from __future__ import annotations

import json

import pytest

from tests.support import cli
from tests.support import client_env
from tests.support import metric
from tests.support import run_python

ASK = """
import json, anthropic, openai
out = []
for model in ("gpt-4o", "gpt-test"):
    r = openai.OpenAI().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    out.append([model, r.usage.prompt_tokens, r.usage.completion_tokens])
r = anthropic.Anthropic().messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                          messages=[{"role": "user", "content": "hi"}])
out.append(["claude-sonnet-4-5", r.usage.input_tokens, r.usage.output_tokens])
print(json.dumps(out))
"""


@pytest.fixture
def priced(configured_proxy, tmp_path):
    log = tmp_path / "access.log"
    p = configured_proxy({
        "prices": [{"match": "anthropic/*", "per_request": 0.04}],
        "log": {"access_file": str(log)},
        "metrics": {"user_labels": True},
    })  # fmt: skip
    env = client_env(p, OPENAI_API_KEY="sk-own", ANTHROPIC_API_KEY="sk-ant-own")
    out = run_python(ASK, env)
    assert out.returncode == 0, out.stderr
    return p, log, json.loads(out.stdout)


def test_each_answer_is_priced_where_it_is_counted(priced):
    p, _, used = priced
    (gpt, gpt_in, gpt_out), _, _ = used
    lines = {r["model"]: r for r in p.access_lines() if r.get("msg") == "request"}
    # gpt-4o at the database's list price: $2.50 in, $10 out per million tokens
    assert lines["gpt-4o"]["price_source"] == "database"
    assert lines["gpt-4o"]["cost_usd"] == pytest.approx((gpt_in * 2.5 + gpt_out * 10) / 1e6)
    assert (lines["claude-sonnet-4-5"]["cost_usd"], lines["claude-sonnet-4-5"]["price_source"]) == (
        0.04,
        "override",
    )
    assert lines["gpt-test"]["cost_usd"] is None and lines["gpt-test"]["price_source"] == "unpriced"
    metrics = p.admin("/metrics").text
    assert metric(metrics, "aibridge_proxy_unpriced_requests_total", provider="openai",
                  model="gpt-test") == 1  # fmt: skip
    spent = sum(
        metric(metrics, "aibridge_proxy_cost_usd_total", provider=provider, model=model, tool=tool)
        for provider, model, tool in (("openai", "gpt-4o", "openai-python"),
                                      ("anthropic", "claude-sonnet-4-5", "anthropic-python"))
    )  # fmt: skip
    assert spent == pytest.approx(lines["gpt-4o"]["cost_usd"] + 0.04)
    assert metric(metrics, "aibridge_proxy_user_cost_usd_total", user="alice",
                  provider="anthropic") == pytest.approx(0.04)  # fmt: skip


def test_the_usage_report_sums_the_cost_and_names_the_unpriced(priced):
    p, log, _ = priced
    p.wait_for_line(lambda r: r.get("model") == "claude-sonnet-4-5")
    report = cli("usage", "--log", str(log), "--by", "model", "--format", "json")
    assert report.returncode == 0, report.stderr
    rows = {(r["model"], r["traffic"]): r for r in json.loads(report.stdout)}
    assert rows[("gpt-test", "routed")]["unpriced"] == 1
    assert rows[("gpt-test", "routed")]["cost_usd"] == 0
    assert rows[("claude-sonnet-4-5", "routed")]["cost_usd"] == pytest.approx(0.04)
    total = rows[("total", "routed")]
    assert total["unpriced"] == 1 and total["cost_usd"] > 0.04
