"""What a request says about itself, in-process: Copilot's own meter (the quota snapshots a
Copilot answer carries are each user's latest on the developer page and in the metrics) and
the request's X-Initiator on its access line (a person's prompt, or an agent's follow-up)."""

from __future__ import annotations

import logging

from prometheus_client import generate_latest

from addons.rules.copilot_quota import initiator_of
from addons.rules.copilot_quota import quota_snapshots
from addons.rules.token_validation import TokenCache
from certs.authority import engine_confdir
from certs.authority import generate_ca
from tests.addons.chain import full_chain
from tests.addons.test_auth import CountingValidator
from tests.addons.test_self_service import ask

SNAPSHOT = (b"x-quota-snapshot-premium_interactions",
            b"ent=300&ov=0.0&ovPerm=false&rem=212&rst=2027-01-01T00%3A00%3A00Z")  # fmt: skip


def test_snapshots_and_initiators_are_read_as_copilot_writes_them():
    (premium,) = quota_snapshots([SNAPSHOT, (b"content-type", b"application/json")])
    assert (premium.quota, premium.entitlement, premium.remaining, premium.overage_permitted) == (
        "premium_interactions", 300.0, 212.0, False)  # fmt: skip
    assert premium.describe() == (
        "Copilot premium interactions: 212 of 300 left, resets 2027-01-01T00:00:00Z"
    )
    (chat,) = quota_snapshots([(b"X-Quota-Snapshot-Chat", b"ent=-1&rem=0")])
    assert chat.unlimited and chat.describe() == "Copilot chat: unlimited"
    assert quota_snapshots([(b"x-quota-snapshot-../../x", b"ent=1")]) == []  # not a quota id
    (odd,) = quota_snapshots([(b"x-quota-snapshot-q", b"ent=nan&rem=lots")])
    assert odd.entitlement is None and odd.remaining is None
    assert (initiator_of("agent"), initiator_of(" User "), initiator_of("bot")) == (
        "agent", "user", None)  # fmt: skip


async def test_the_meter_reaches_the_page_the_metrics_and_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    confdir = engine_confdir(generate_ca(), tmp_path / "engine")
    with full_chain(confdir=str(confdir), aibridge_metrics_user_labels=True) as chain:
        chain.addons["TokenAuth"].cache = TokenCache(CountingValidator())
        connect = await chain.connect("api.githubcopilot.com")
        flow = await chain.send(connect, path="/chat/completions", content=b'{"model": "gpt-4o"}',
                                headers=[(b"Content-Type", b"application/json"),
                                         (b"X-Initiator", b"agent")])  # fmt: skip
        await chain.answer(flow, body=b"{}", headers=[(b"Content-Type", b"application/json"),
                                                      SNAPSHOT])  # fmt: skip
        (line,) = [r.fields for r in caplog.records if r.name == "aibridge.access"]
        assert line["initiator"] == "agent"
        metrics = generate_latest(chain.addons["Metrics"].registry).decode()
        assert ('aibridge_proxy_copilot_quota_remaining{quota="premium_interactions",'
                'user="alice"} 212.0') in metrics  # fmt: skip
        page = await ask(chain, "GET", "/", user="laptop")
        assert "Copilot premium interactions: 212 of 300 left" in page.response.text
