"""
How to put our CA into (or take it out of) each operating system's trust store, as a plan:
files to write or delete and commands to run. Pure: `aibridge-proxy trust` prints and runs a
plan on the laptop (proxy/client/trust.py), the developer page shows the same plan's lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization

NAME = "aibridge-proxy"


class TrustError(Exception):
    pass


@dataclass
class Plan:
    platform: str
    copy: tuple[Path, bytes] | None = None  # destination, content
    delete: Path | None = None
    commands: list[list[str]] = field(default_factory=list)

    def describe(self) -> list[str]:
        out = []
        if self.copy:
            out.append(f"write {self.copy[0]}")
        if self.delete:
            out.append(f"remove {self.delete}")
        out += [" ".join(_shell_quote(a) for a in c) for c in self.commands]
        return out


def _shell_quote(arg: str) -> str:
    return (
        arg
        if arg and all(c.isalnum() or c in "-_./=:@" for c in arg)
        else "'" + arg.replace("'", "'\\''") + "'"
    )


def plan(platform: str, ca_pem: bytes, remove: bool) -> Plan:
    cert = x509.load_pem_x509_certificate(ca_pem)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    sha1 = cert.fingerprint(hashes.SHA1()).hex()  # how macOS and Windows name a certificate
    if platform == "debian":
        dest = Path(f"/usr/local/share/ca-certificates/{NAME}.crt")
        if remove:
            return Plan(platform, delete=dest, commands=[["update-ca-certificates", "--fresh"]])
        return Plan(platform, copy=(dest, pem), commands=[["update-ca-certificates"]])
    if platform == "redhat":
        dest = Path(f"/etc/pki/ca-trust/source/anchors/{NAME}.pem")
        if remove:
            return Plan(platform, delete=dest, commands=[["update-ca-trust", "extract"]])
        return Plan(platform, copy=(dest, pem), commands=[["update-ca-trust", "extract"]])
    if platform == "macos":
        keychain = "/Library/Keychains/System.keychain"
        if remove:
            return Plan(
                platform,
                commands=[["security", "delete-certificate", "-Z", sha1.upper(), keychain]],
            )
        tmp = Path(f"/tmp/{NAME}-ca.pem")
        return Plan(
            platform,
            copy=(tmp, pem),
            commands=[
                ["security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", keychain, str(tmp)]
            ],
        )
    if platform == "windows":
        if remove:
            return Plan(platform, commands=[["certutil", "-delstore", "Root", sha1]])
        tmp = Path(f"{NAME}-ca.cer")
        return Plan(
            platform, copy=(tmp, pem), commands=[["certutil", "-addstore", "-f", "Root", str(tmp)]]
        )
    raise TrustError(f"unknown platform {platform!r}: use debian, redhat, macos or windows")
