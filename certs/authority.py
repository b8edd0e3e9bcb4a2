"""
The certificate authority that signs our leaf certificates: create it, load it, check it.

Plain `cryptography`, no mitmproxy: the program hands mitmproxy the files it expects
(`engine_confdir`), and the tests inspect what we generate with the same library.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_COMMON_NAME = "aibridge-proxy CA"
DEFAULT_VALIDITY_DAYS = 3650
EXPIRY_WARNING = datetime.timedelta(days=30)


class CAError(Exception):
    """A CA problem the operator must fix; the message says how."""


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # intermediates and root above `cert`, if any

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def not_after(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def permitted_domains(self) -> list[str] | None:
        """The DNS names the CA may sign for, or None when it is unconstrained."""
        try:
            nc = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return None
        return [n.value for n in nc.permitted_subtrees or () if isinstance(n, x509.DNSName)]


def der_certificate(pem: bytes) -> bytes:
    """The certificate as DER (the .cer Windows and macOS import with a double-click)."""
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def constraint_domains(host_patterns: Iterable[str]) -> list[str]:
    """The name-constraint subtrees that cover the given host patterns.

    An exact host permits itself (and, by RFC 5280, its subdomains); `*.suffix` permits the
    suffix. A `*` further right has no subtree but its whole suffix (all of amazonaws.com for
    `bedrock-runtime.*.amazonaws.com`), so such patterns are refused here: spell them out first
    (addons/rules/providers.py `constraint_hosts`).
    """
    out: list[str] = []
    for pattern in host_patterns:
        labels = pattern.lower().rstrip(".").split(".")
        if "*" in labels[1:]:
            raise CAError(
                f"{pattern}: a wildcard inside a host name cannot be name-constrained; "
                "list the concrete hosts"
            )
        if labels[0] == "*":
            labels = labels[1:]
        domain = ".".join(labels)
        if domain and domain not in out:
            out.append(domain)
    # drop names already covered by a parent in the list
    return [d for d in out if not any(d != p and d.endswith("." + p) for p in out)]


def generate_ca(
    common_name: str = DEFAULT_COMMON_NAME,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    key_type: str = "ecdsa",
    permitted_domains: list[str] | None = None,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """A self-signed CA: basicConstraints CA with pathlen 0, keyCertSign and cRLSign, and (unless
    `permitted_domains` is None) name constraints that permit only those DNS names and exclude
    every IP address."""
    if validity_days < 1:
        raise CAError("CA validity must be at least one day")
    key: PrivateKey
    if key_type == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise CAError(f"unknown key type {key_type!r}: use ecdsa or rsa")
    now = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aibridge-proxy"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if permitted_domains is not None:
        if not permitted_domains:
            raise CAError("a name-constrained CA needs at least one permitted domain")
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(d) for d in permitted_domains],
                excluded_subtrees=[
                    x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                    x509.IPAddress(ipaddress.ip_network("::/0")),
                ],
            ),
            critical=True,
        )
    cert = builder.sign(key, hashes.SHA256())
    return CertificateAuthority(cert, key)


def uncovered_hosts(ca: CertificateAuthority, host_patterns: Iterable[str]) -> list[str]:
    """Routed hosts the CA's name constraints do not permit (clients would reject them)."""
    permitted = ca.permitted_domains()
    if permitted is None:
        return []
    out = []
    for pattern in host_patterns:
        name = pattern.lower().removeprefix("*.")
        if "*" in name or not any(name == d or name.endswith("." + d) for d in permitted):
            out.append(pattern)
    return out


def signable_by(ca: CertificateAuthority | None) -> Callable[[str], bool] | None:
    """Whether `ca` can sign for a host (its name constraints permit it); None: any CA."""
    if ca is None:
        return None
    return lambda host: not uncovered_hosts(ca, [host])


def issue_leaf(
    ca: CertificateAuthority,
    hostnames: list[str],
    validity_days: int = 30,
    ips: Iterable[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate signed by `ca` (for the TLS listener, tests and `doctor`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner may read, without a window where it is wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_ca(
    ca: CertificateAuthority, cert_path: Path, key_path: Path, force: bool = False
) -> None:
    if not force:
        for p in (cert_path, key_path):
            if p.exists():
                raise CAError(f"{p} already exists; pass --force to replace it")
    write_private(key_path, key_pem(ca.key))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(ca.cert_pem() + ca.chain_pem())
    os.chmod(cert_path, 0o644)


def check_key_permissions(key_path: Path) -> None:
    """Owner-only, as ssh and PostgreSQL insist; like PostgreSQL, a root-owned key readable by
    our own group is accepted too (how Kubernetes mounts a Secret with fsGroup)."""
    st = key_path.stat()
    mode = stat.S_IMODE(st.st_mode)
    root_owned_for_our_group = st.st_uid == 0 and st.st_gid in {os.getgid(), *os.getgroups()}
    if mode & 0o007 or (mode & 0o070 and not root_owned_for_our_group):
        raise CAError(
            f"CA key {key_path} is readable by group or others (mode {mode:04o}); "
            f"fix it with: chmod 600 {key_path}"
        )


def load_ca(
    cert_path: Path, key_path: Path, check_permissions: bool = True
) -> CertificateAuthority:
    """Load and sanity-check a CA (or an intermediate followed by its chain)."""
    try:
        cert_data = cert_path.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read CA certificate {cert_path}: {e.strerror}") from None
    try:
        key_data = key_path.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read CA key {key_path}: {e.strerror}") from None
    if check_permissions:
        check_key_permissions(key_path)
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise CAError(f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise CAError(f"{key_path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(f"{key_path}: only ECDSA and RSA keys can sign leaf certificates")
    cert = certs[0]
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CAError(f"{key_path} does not belong to the certificate in {cert_path}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE missing)")
    return CertificateAuthority(cert, key, tuple(certs[1:]))


def expiry_warning(ca: CertificateAuthority, now: datetime.datetime | None = None) -> str | None:
    now = now or datetime.datetime.now(datetime.UTC)
    left = ca.not_after - now
    if left <= datetime.timedelta(0):
        return f"the CA certificate expired on {ca.not_after:%Y-%m-%d}; run `aibridge-proxy ca init --force`"
    if left <= EXPIRY_WARNING:
        return f"the CA certificate expires on {ca.not_after:%Y-%m-%d} ({left.days} days left)"
    return None


def engine_confdir(ca: CertificateAuthority, confdir: Path) -> Path:
    """Write the files mitmproxy reads (`mitmproxy-ca.pem`: key, cert, chain) into a private
    directory and return it."""
    confdir.mkdir(parents=True, exist_ok=True)
    os.chmod(confdir, 0o700)
    write_private(confdir / "mitmproxy-ca.pem", key_pem(ca.key) + ca.cert_pem() + ca.chain_pem())
    write_private(confdir / "mitmproxy-ca-cert.pem", ca.cert_pem())
    return confdir
