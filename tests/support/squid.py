"""A real squid from the Debian package, standing in for a company's authenticating egress
proxy: NTLM through its `ntlm_fake_auth` helper (the handshake is real, the password check is
not), or Negotiate through `negotiate_wrapper_auth` (raw NTLM tokens to the same helper,
Kerberos tokens to `negotiate_kerberos_auth`). Loopback only; its access log says who signed in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import free_port
from tests.support import wait_listening

SQUID = Path("/usr/sbin/squid")
HELPERS = Path("/usr/lib/squid")


class SquidProxy:
    def __init__(self, auth: str = "ntlm", keytab: Path | None = None, env=None):
        self.auth = auth
        self.keytab = keytab
        self.env = env or {}
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return SQUID.exists() and (HELPERS / "ntlm_fake_auth").exists()

    def _auth_config(self) -> str:
        if self.auth == "ntlm":
            return (
                f"auth_param ntlm program {HELPERS / 'ntlm_fake_auth'}\n"
                "auth_param ntlm children 2\nauth_param ntlm keep_alive on\n"
            )
        kerberos = f"{HELPERS / 'negotiate_kerberos_auth'} -s GSS_C_NO_NAME"
        return (
            f"auth_param negotiate program {HELPERS / 'negotiate_wrapper_auth'} "
            f"--ntlm {HELPERS / 'ntlm_fake_auth'} --kerberos {kerberos}\n"
            "auth_param negotiate children 2\nauth_param negotiate keep_alive on\n"
        )

    def start(self) -> SquidProxy:
        # squid drops to its own user: its files live in a directory that user can write
        self.dir = Path(tempfile.mkdtemp(prefix="aibridge-squid-", dir="/tmp"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        conf = self.dir / "squid.conf"
        conf.write_text(
            f"http_port 127.0.0.1:{self.port}\n"
            f"pid_filename {self.dir / 'squid.pid'}\n"
            f"cache_log {self.dir / 'cache.log'}\n"
            f"access_log stdio:{self.dir / 'access.log'}\n"
            f"coredump_dir {self.dir}\n"
            "cache deny all\nshutdown_lifetime 0 seconds\ndns_v4_first on\n"
            + self._auth_config()
            + "acl signed_in proxy_auth REQUIRED\nhttp_access allow signed_in\n"
            "http_access deny all\n"
        )
        env = {**os.environ, **self.env}
        if self.keytab is not None:
            env["KRB5_KTNAME"] = str(self.keytab)
        self.proc = subprocess.Popen(
            [str(SQUID), "-N", "-f", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        if not wait_listening(self.port, 20):
            self.stop()
            raise RuntimeError("squid did not start:\n" + self.cache_log())
        return self

    def cache_log(self) -> str:
        assert self.dir is not None
        log = self.dir / "cache.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def access_lines(self) -> list[list[str]]:
        """Each access-log line split in fields: time, duration, client, code/status, bytes,
        method, URL, user, hierarchy/peer, type."""
        assert self.dir is not None
        log = self.dir / "access.log"
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    def tunnels(self, count: int, timeout: float = 10) -> list[list[str]]:
        """The access lines of finished tunnels (squid logs one when it closes), once there
        are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            done = [
                f for f in self.access_lines() if f[5] == "CONNECT" and f[3] == "TCP_TUNNEL/200"
            ]
            if len(done) >= count or time.monotonic() > deadline:
                return done
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # squid and its helpers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
