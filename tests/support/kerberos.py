"""A real Kerberos realm for one test: MIT krb5kdc from the Debian package on a free loopback
port, a user principal with a credential cache, and a service keytab for the proxy's
`HTTP/localhost` principal. Nothing is read from or written to /etc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support import free_port
from tests.support import wait_listening

REALM = "AIBRIDGE.TEST"
KDC = Path("/usr/sbin/krb5kdc")
KDB5_UTIL = Path("/usr/sbin/kdb5_util")
KADMIN_LOCAL = Path("/usr/sbin/kadmin.local")
KINIT = Path("/usr/bin/kinit")


class KerberosRealm:
    def __init__(self) -> None:
        self.dir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return all(p.exists() for p in (KDC, KDB5_UTIL, KADMIN_LOCAL, KINIT))

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this realm (its krb5.conf; the KDC's own profile)."""
        assert self.dir is not None
        return {
            "KRB5_CONFIG": str(self.dir / "krb5.conf"),
            "KRB5_KDC_PROFILE": str(self.dir / "kdc.conf"),
        }

    def _run(self, *cmd: str, input: str | None = None) -> None:
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=60,
            env={**os.environ, **self.env},
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr}")

    def start(self) -> KerberosRealm:
        # squid's helper runs as squid's own user and must read the keytab and krb5.conf
        self.dir = Path(tempfile.mkdtemp(prefix="aibridge-krb5-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        (self.dir / "krb5.conf").write_text(
            f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n"
            " dns_lookup_realm = false\n rdns = false\n dns_canonicalize_hostname = false\n"
            " udp_preference_limit = 1\n"
            f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{self.port}\n }}\n"
            f"[domain_realm]\n localhost = {REALM}\n"
        )
        (self.dir / "kdc.conf").write_text(
            f"[kdcdefaults]\n kdc_ports = {self.port}\n kdc_tcp_ports = {self.port}\n"
            f"[realms]\n {REALM} = {{\n  database_name = {self.dir / 'principal'}\n"
            f"  key_stash_file = {self.dir / 'stash'}\n  acl_file = {self.dir / 'kadm5.acl'}\n"
            "  supported_enctypes = aes256-cts-hmac-sha1-96:normal\n }\n"
        )
        self._run(str(KDB5_UTIL), "create", "-s", "-r", REALM, "-P", "master-password")
        self._run(str(KADMIN_LOCAL), "-r", REALM, "-q", "addprinc -pw alice-password alice")
        self._run(str(KADMIN_LOCAL), "-r", REALM, "-q", "addprinc -randkey HTTP/localhost")
        self._run(str(KADMIN_LOCAL), "-r", REALM, "-q", f"ktadd -k {self.keytab} HTTP/localhost")
        os.chmod(self.keytab, 0o644)
        self.proc = subprocess.Popen(
            [str(KDC), "-n", "-r", REALM],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_listening(self.port, 20):
            self.stop()
            raise RuntimeError("krb5kdc did not start")
        return self

    @property
    def keytab(self) -> Path:
        assert self.dir is not None
        return self.dir / "http.keytab"

    def sign_in(self, name: str = "alice", password: str = "alice-password") -> Path:
        """kinit as a user would: a credential cache holding the user's ticket."""
        assert self.dir is not None
        cache = self.dir / f"ccache-{name}"
        self._run(str(KINIT), "-c", f"FILE:{cache}", name, input=password + "\n")
        return cache

    def client_keytab(self, name: str) -> Path:
        """A keytab holding `name`'s keys (its password unchanged), as a service account has."""
        assert self.dir is not None
        keytab = self.dir / f"{name}.keytab"
        self._run(str(KADMIN_LOCAL), "-r", REALM, "-q", f"ktadd -norandkey -k {keytab} {name}")
        return keytab

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
