"""
Trust bundles: the system roots plus extra CAs, in one PEM file.

Used twice: for upstream connections (system roots + `gateway_ca_file`/`origin_ca_file`), and
for clients whose CA variable replaces the trust store (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
`CURL_CA_BUNDLE`): system roots + our CA.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

# Where Debian/Ubuntu, RHEL/Fedora, Alpine, SUSE and macOS (Homebrew OpenSSL) keep their roots.
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/openssl/cert.pem",
)


class BundleError(Exception):
    pass


def system_roots_path() -> Path:
    """The file with this machine's trusted roots (falls back to certifi's copy)."""
    default = ssl.get_default_verify_paths().cafile
    for candidate in (default, *_SYSTEM_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import certifi

    return Path(certifi.where())


def read_pem_certificates(path: Path, what: str) -> bytes:
    """The PEM certificates in a file, checked to parse; BundleError names the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BundleError(f"{what} {path} holds no PEM certificate") from None
    return data if data.endswith(b"\n") else data + b"\n"


def build_bundle(extra: Iterable[tuple[Path, str]] = (), include_system: bool = True) -> bytes:
    parts: list[bytes] = []
    if include_system:
        parts.append(system_roots_path().read_bytes().rstrip(b"\n") + b"\n")
    for path, what in extra:
        parts.append(read_pem_certificates(path, what))
    return b"".join(parts)


def write_bundle(dest: Path, extra: Iterable[tuple[Path, str]] = (), tail: bytes = b"") -> Path:
    """System roots + `extra` files + `tail`, written atomically: workers and clients may be
    reading the file while a reload rewrites it."""
    data = build_bundle(extra) + tail
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest
