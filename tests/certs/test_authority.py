"""The CA we generate: parse it and check every property that matters."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from addons.rules.providers import PRESETS
from addons.rules.providers import constraint_hosts
from certs.authority import CAError
from certs.authority import constraint_domains
from certs.authority import expiry_warning
from certs.authority import generate_ca
from certs.authority import load_ca
from certs.authority import uncovered_hosts
from certs.authority import write_ca


def test_default_ca_properties():
    ca = generate_ca(permitted_domains=["api.openai.com", "githubcopilot.com"])
    cert = ca.cert
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert [n.value for n in nc.value.permitted_subtrees] == ["api.openai.com", "githubcopilot.com"]
    assert {n.value for n in nc.value.excluded_subtrees} == {
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    }
    assert cert.subject == cert.issuer
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) < life <= datetime.timedelta(days=3652)


def test_rsa_and_custom_name_and_validity():
    ca = generate_ca("Acme AI proxy", 30, "rsa", None)
    assert isinstance(ca.key, rsa.RSAPrivateKey) and ca.key.key_size == 3072
    assert (
        ca.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "Acme AI proxy"
    )
    with pytest.raises(x509.ExtensionNotFound):
        ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ca.permitted_domains() is None


def test_constraint_domains():
    assert constraint_domains(
        ["api.openai.com", "*.openai.azure.com", "x.api.openai.com", "api.openai.com"]
    ) == ["api.openai.com", "openai.azure.com"]
    # a wildcard inside a name has no subtree narrower than its whole suffix
    with pytest.raises(CAError, match="bedrock-runtime.\\*.amazonaws.com: a wildcard inside"):
        constraint_domains(["bedrock-runtime.*.amazonaws.com"])


def test_the_bedrock_preset_is_constrained_to_its_regions_not_amazonaws_com():
    hosts, uncoverable = constraint_hosts(
        ["api.openai.com", *(h for h, _, _ in PRESETS["bedrock"])]
    )
    permitted = constraint_domains(hosts)
    assert uncoverable == [] and "amazonaws.com" not in permitted
    assert "bedrock-runtime.us-east-1.amazonaws.com" in permitted
    ca = generate_ca(permitted_domains=permitted)
    assert uncovered_hosts(ca, ["s3.amazonaws.com", "bedrock-runtime.eu-west-1.amazonaws.com"]) == [
        "s3.amazonaws.com"
    ]
    assert constraint_hosts(["a.*.example.com"]) == ([], ["a.*.example.com"])


def test_write_and_load(tmp_path):
    ca = generate_ca(permitted_domains=["api.openai.com"])
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    write_ca(ca, cert, key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with pytest.raises(CAError, match="already exists; pass --force"):
        write_ca(ca, cert, key)
    loaded = load_ca(cert, key)
    assert loaded.fingerprint == ca.fingerprint
    os.chmod(key, 0o644)
    with pytest.raises(CAError, match=f"chmod 600 {key}"):
        load_ca(cert, key)


@pytest.mark.skipif(os.geteuid() != 0, reason="changes file ownership")
def test_group_readable_key_only_when_root_owned_for_our_group(tmp_path):
    """PostgreSQL's rule, which is also how Kubernetes mounts a Secret with fsGroup."""
    ca = generate_ca(permitted_domains=None)
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    write_ca(ca, cert, key)
    os.chmod(key, 0o640)
    os.chown(key, 0, os.getgid())
    assert load_ca(cert, key).fingerprint == ca.fingerprint
    os.chown(key, 12345, os.getgid())
    with pytest.raises(CAError, match="readable by group"):
        load_ca(cert, key)


def test_load_rejects_mismatched_key_and_non_ca(tmp_path):
    a, b = generate_ca(permitted_domains=None), generate_ca(permitted_domains=None)
    write_ca(a, tmp_path / "a.pem", tmp_path / "a.key")
    write_ca(b, tmp_path / "b.pem", tmp_path / "b.key")
    with pytest.raises(CAError, match="does not belong"):
        load_ca(tmp_path / "a.pem", tmp_path / "b.key")
    (tmp_path / "junk.pem").write_text("not a cert")
    with pytest.raises(CAError, match="holds no PEM certificate"):
        load_ca(tmp_path / "junk.pem", tmp_path / "a.key")


def test_expiry_warning():
    ca = generate_ca(validity_days=20, permitted_domains=None)
    assert "expires on" in expiry_warning(ca)
    assert expiry_warning(generate_ca(permitted_domains=None)) is None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=40)
    assert "expired" in expiry_warning(ca, now=later)


def test_uncovered_hosts():
    from certs.authority import uncovered_hosts

    ca = generate_ca(permitted_domains=["api.openai.com", "openai.azure.com"])
    assert uncovered_hosts(
        ca, ["api.openai.com", "x.api.openai.com", "*.openai.azure.com", "api.x.ai"]
    ) == ["api.x.ai"]
    assert uncovered_hosts(generate_ca(permitted_domains=None), ["anything.example"]) == []
