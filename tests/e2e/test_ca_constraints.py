"""The CA cannot be abused: a certificate for any name outside the routed domains, signed with
our own CA key, is rejected by OpenSSL-based clients (Python ssl, curl)."""

from __future__ import annotations

import ssl
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from certs.authority import constraint_domains
from certs.authority import generate_ca
from certs.authority import issue_leaf
from certs.authority import key_pem
from proxy.server.settings import load_settings
from tests.support import BackgroundLoop
from tests.support import start_tcp_server


class LeafServer:
    """A TLS server presenting one certificate."""

    def __init__(self, cert, key, tmp_path):
        pem = tmp_path / "leaf.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem(key))
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(pem)
        self.bg = BackgroundLoop()

        async def handle(reader, writer):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        self.port = self.bg.run(start_tcp_server(handle, self.ctx))

    def stop(self):
        self.bg.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """The CA `ca init` makes for the default provider table."""
    hosts = load_settings({}, environ={}).provider_table.hosts()
    authority = generate_ca(permitted_domains=constraint_domains(hosts))
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(authority.cert_pem())
    return authority, path


def python_connect(ca_path, port, hostname) -> None:
    ctx = ssl.create_default_context(cafile=str(ca_path))
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=hostname):
            pass


def curl(ca_path, port, hostname) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(ca_path),
            "--resolve",
            f"{hostname}:{port}:127.0.0.1",
            f"https://{hostname}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )


@pytest.mark.parametrize("hostname", ["api.openai.com", "api.business.githubcopilot.com"])
def test_names_inside_the_constraints_are_accepted(ca, tmp_path, hostname):
    authority, path = ca
    server = LeafServer(*issue_leaf(authority, [hostname]), tmp_path)
    try:
        python_connect(path, server.port, hostname)
        r = curl(path, server.port, hostname)
        assert r.returncode == 0 and r.stdout == "ok", r.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(
    "hostname",
    [
        "www.google.com",
        "login.microsoftonline.com",
        "openai.com",
        "evil-api.openai.com.attacker.net",
    ],
)
def test_names_outside_the_constraints_are_rejected(ca, tmp_path, hostname):
    authority, path = ca
    server = LeafServer(*issue_leaf(authority, [hostname]), tmp_path)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
            python_connect(path, server.port, hostname)
        r = curl(path, server.port, hostname)
        assert r.returncode != 0
        assert "subtree" in r.stderr or "certificate" in r.stderr
    finally:
        server.stop()


def test_ip_addresses_are_excluded(ca, tmp_path):
    authority, path = ca
    server = LeafServer(*issue_leaf(authority, ["api.openai.com"], ips=["127.0.0.1"]), tmp_path)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="excluded subtree violation"):
            python_connect(path, server.port, "127.0.0.1")
    finally:
        server.stop()
