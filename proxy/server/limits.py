"""
The open-file limit: every stream costs a client socket and a gateway socket, so a proxy held
at the common soft limit of 1,024 stops near 500 streams. The service raises its soft limit
to the hard limit the system grants (systemd's `LimitNOFILE=`, a container's ulimit) once at
start; workers inherit it.
"""

from __future__ import annotations

import resource

CEILING = 1 << 20  # when the hard limit is unlimited: the kernel's usual nr_open


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; return (soft, hard) as they now are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # refused (e.g. above nr_open): keep what we have, and report it
    return resource.getrlimit(resource.RLIMIT_NOFILE)
