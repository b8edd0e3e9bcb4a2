"""Run inside a network namespace with only loopback (tests/e2e/test_destinations.py starts it
with `unshare --net`): the real proxy is asked to reach each example of a refused range, by
CONNECT and by a plain proxied request; prints {address: [connect status, request status]}.
Nothing outside this namespace can be dialled, even by a bug."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from addons.rules.destinations import REFUSED_DESTINATIONS
from tests.support import ALICE
from tests.support import ProxyProcess
from tests.support import ThreadedGateway
from tests.support import connect_through
from tests.support import proxy_basic
from tests.support import raw_request


def main() -> None:
    gateway = ThreadedGateway().start()
    with tempfile.TemporaryDirectory() as tmp:
        p = ProxyProcess(Path(tmp), ["--gateway", gateway.url, "--auth-max-failures", "0"])
        p.start()
        results = {}
        auth = proxy_basic(ALICE)
        try:
            for _, _, address in REFUSED_DESTINATIONS:
                host = f"[{address}]" if ":" in address else address
                connect, _ = connect_through(p.port, f"{host}:443", auth)
                plain = raw_request(
                    p.port,
                    f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n"
                    f"Proxy-Authorization: {auth}\r\n\r\n".encode(),
                )
                results[address] = [connect, int(plain.split(b" ", 2)[1])]
        finally:
            p.stop()
            gateway.stop()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
