"""Several gateways with failover: a stopped gateway is skipped with no client error for
requests that had not started, a stream that started is never retried elsewhere, a gateway
failing its health check is skipped, and /readyz and the metrics say so per gateway."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support import ThreadedGateway
from tests.support import metric
from tests.support import proxy_client


@pytest.fixture
def pair():
    primary, backup = ThreadedGateway().start(), ThreadedGateway().start()
    yield primary, backup
    primary.stop()
    backup.stop()


@pytest.fixture
def failover(make_proxy, pair, tmp_path):
    primary, backup = pair
    config = {
        "gateways": {"primary": {"url": primary.url}, "backup": {"url": backup.url}},
        "rules": [
            {
                "name": "ha",
                "match": {"host": ["api.openai.com"]},
                "route": {"gateway": ["primary", "backup"], "provider": "openai"},
            }
        ],
        "health": {"interval": 0.3},
    }
    path = tmp_path / "failover.yaml"
    path.write_text(yaml.safe_dump(config))
    return make_proxy("--config", str(path), gateway="")


def post(c) -> int:
    return c.post("https://api.openai.com/v1/chat/completions", json={"model": "m"}).status_code


def test_a_stopped_gateway_is_skipped_with_no_client_error(failover, pair):
    primary, backup = pair
    with proxy_client(failover) as c:
        assert [post(c) for _ in range(5)] == [200] * 5
    assert len(primary.records) == 5 and backup.records == []
    primary.stop()
    with proxy_client(failover) as c:  # new connections, as clients reconnect
        assert [post(c) for _ in range(20)] == [200] * 20
    assert len(backup.records) == 20
    ready = failover.admin("/readyz").json()
    assert ready["ready"] is True and ready["gateways"]["backup"] == "ok"
    assert "unreachable" in ready["gateways"]["primary"]
    text = failover.admin("/metrics").text
    assert metric(text, "aibridge_proxy_gateway_failovers_total", gateway="primary") >= 1
    assert metric(text, "aibridge_proxy_gateway_requests_total", gateway="backup") == 20
    line = failover.wait_for_line(lambda r: r.get("gateway") == "backup")
    assert line["rule"] == "ha"


def test_a_started_stream_is_never_retried(failover, pair):
    primary, backup = pair
    events = []
    with proxy_client(failover) as c:
        with c.stream("GET", "https://api.openai.com/_diag/sse?events=20&interval=0.1") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:])["i"])
                    if len(events) == 3:
                        primary.stop()
    # the stream stays on the gateway it started on (which finishes it before going away),
    # and nothing of it is sent again elsewhere
    assert events == list(range(20))
    assert any("_diag/sse" in rec.path for rec in primary.records)
    assert not any("_diag/sse" in rec.path for rec in backup.records)


def test_a_gateway_failing_its_health_check_is_skipped(failover, pair):
    primary, backup = pair
    primary.gateway.health_status = 503
    failover.wait_for_line(lambda r: "gateway primary is down" in r.get("msg", ""))
    with proxy_client(failover) as c:
        assert [post(c) for _ in range(5)] == [200] * 5
    assert len(backup.records) == 5 and not any("chat" in r.path for r in primary.records)
    primary.gateway.health_status = 200
    failover.wait_for_line(lambda r: "gateway primary recovered" in r.get("msg", ""))
    with proxy_client(failover) as c:
        assert post(c) == 200
    assert "chat" in primary.records[-1].path
