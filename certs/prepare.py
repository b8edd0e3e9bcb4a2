"""
The files the proxy needs from its CA before it can serve: the CA itself (generated on first
start, name-constrained to the routed hosts), the client bundle developers may use as their
whole trust store, and the engine's confdir with the upstream trust bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from certs.authority import CertificateAuthority
from certs.authority import constraint_domains
from certs.authority import engine_confdir
from certs.authority import expiry_warning
from certs.authority import generate_ca
from certs.authority import load_ca
from certs.authority import uncovered_hosts
from certs.authority import write_ca
from certs.bundle import write_bundle


def ensure_ca(
    cert_path: Path, key_path: Path, brought: bool, routed_hosts: Iterable[str]
) -> tuple[CertificateAuthority, bool]:
    """Load the CA; with none brought by the operator and none on disk, create one there.
    Returns the CA and whether it was just created. Raises CAError."""
    if not brought and not cert_path.exists() and not key_path.exists():
        ca = generate_ca(permitted_domains=constraint_domains(routed_hosts))
        write_ca(ca, cert_path, key_path)
        return ca, True
    return load_ca(cert_path, key_path), False


def ca_warnings(
    ca: CertificateAuthority, routed_hosts: Iterable[str], uncoverable: Iterable[str] = ()
) -> list[str]:
    """What an operator must act on: a CA without name constraints, an expiring CA, routed
    hosts it cannot sign for."""
    warnings = [w] if (w := expiry_warning(ca)) else []
    if ca.permitted_domains() is None:
        warnings.append(
            "THIS CA HAS NO NAME CONSTRAINTS: anyone who obtains its key can impersonate any "
            "site to every client that trusts it; create a constrained one with "
            "`aibridge-proxy ca init --force`"
        )
    if uncoverable := list(uncoverable):
        warnings.append(
            "routed patterns with a wildcard inside a name are left out of the CA's name "
            f"constraints (they could only permit the whole suffix): {', '.join(uncoverable)}; "
            "route the concrete hosts instead"
        )
    if outside := uncovered_hosts(ca, routed_hosts):
        warnings.append(
            "routed or observed hosts outside the CA's name constraints (clients will reject "
            "them): "
            f"{', '.join(outside)}; create a CA that covers them with "
            "`aibridge-proxy ca init --force`"
        )
    return warnings


def write_client_bundle(ca: CertificateAuthority, dest: Path) -> Path:
    """System roots + our CA (and its chain): for clients whose CA variable replaces the trust
    store (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE)."""
    return write_bundle(dest, tail=ca.cert_pem() + ca.chain_pem())


def write_engine_files(
    ca: CertificateAuthority,
    engine_dir: Path,
    origin_trust: Iterable[tuple[Path, str]],
    gateway_trust: Iterable[tuple[Path, str]] = (),
) -> tuple[Path, Path, Path]:
    """mitmproxy's confdir (our CA) and the two bundles upstream servers are verified
    against, one per leg: system roots + the operator's extra CAs for origins (observed hosts,
    pass-through, the upstream proxy), and for the gateway. A CA trusted for one leg is never
    trusted for the other. Raises BundleError naming a bad file."""
    confdir = engine_confdir(ca, engine_dir)
    return (
        confdir,
        write_bundle(confdir / "upstream-trust.pem", origin_trust),
        write_bundle(confdir / "gateway-trust.pem", gateway_trust),
    )
