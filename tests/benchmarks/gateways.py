"""The benchmarks' TLS gateways: a work directory with a private CA and the gateway's
certificate (gw.pem, trusted through gw-ca.pem), and the HTTP/2 gateway in its own process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from tests.benchmarks.__main__ import ROOT
from tests.benchmarks.__main__ import free_port


def gateway_workdir(prefix: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    ca = generate_ca("bench gateway CA", 2, permitted_domains=None)
    cert, key = issue_leaf(ca, ["localhost"], ips=["127.0.0.1"])
    (work / "gw.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
    (work / "gw-ca.pem").write_bytes(ca.cert_pem())
    return work


def start_h2_gateway(work: Path, env: dict) -> tuple[int, subprocess.Popen]:
    """tests/support/h2_gateway.py on a free port (250 streams per connection, as Go's)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.h2_gateway", str(port), str(work / "gw.pem")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return port, proc
