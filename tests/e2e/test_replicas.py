"""Stateless replicas: two proxies share one CA and config behind a TCP balancer and serve the
same clients without errors while one reloads and the other restarts."""

from __future__ import annotations

import signal
import ssl
import threading
import time

import httpx

from proxy.devtools.localgateway import REPLY
from tests.support import ALICE
from tests.support import BOB
from tests.support import ProxyProcess
from tests.support import TcpBalancer
from tests.support import free_port


def test_two_replicas_behind_a_balancer(gateway, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"gateway: {gateway.url}\nshutdown_delay: 0.5\nauth:\n  cache_ttl: 60\n")
    first = ProxyProcess(tmp_path / "a", ["--config", str(config)]).start()
    # the second replica uses the first one's CA: one trust anchor for all clients
    shared_ca = [
        "--ca-cert-file",
        str(first.ca_path),
        "--ca-key-file",
        str(first.state_dir / "ca-key.pem"),
    ]
    port_b = free_port()
    second = ProxyProcess(
        tmp_path / "b", ["--config", str(config), *shared_ca], listen_port=port_b
    ).start()
    balancer = TcpBalancer([first, second]).start()
    ctx = ssl.create_default_context(cafile=str(first.ca_path))
    stop = threading.Event()
    results: list[str] = []

    def client_loop(token: str) -> None:
        while not stop.is_set():
            try:
                # a new connection each time, so the balancer spreads them
                with httpx.Client(
                    proxy=f"http://coder:{token}@127.0.0.1:{balancer.port}",
                    verify=ctx,
                    trust_env=False,
                    timeout=20,
                ) as c:
                    r = c.post(
                        "https://api.openai.com/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    )
                    results.append(
                        "ok"
                        if r.status_code == 200
                        and r.json()["choices"][0]["message"]["content"] == REPLY
                        else f"status {r.status_code}"
                    )
            except httpx.HTTPError as e:
                results.append(f"error {e!r}")

    threads = [
        threading.Thread(target=client_loop, args=(t,), daemon=True)
        for t in (ALICE, BOB, ALICE, BOB)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(1)
        config.write_text(f"gateway: {gateway.url}\nshutdown_delay: 0.5\nauth:\n  cache_ttl: 120\n")
        first.signal(signal.SIGHUP)  # one replica reloads...
        first.wait_for_line(lambda r: r.get("msg") == "configuration reloaded")
        time.sleep(0.5)
        assert second.stop() == 0  # ...the other restarts
        time.sleep(0.5)
        second.start()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        balancer.stop()
        first.stop()
        second.stop()
    errors = [r for r in results if r != "ok"]
    assert len(results) > 40 and errors == [], (len(results), errors[:5])
    served = [len(p.access_lines()) for p in (first, second)]
    assert all(served), served
