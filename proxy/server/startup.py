"""
What a service process prepares before it serves, shared by the single-process app and the
supervisor of several workers: the CA (created on first start) with the warnings an operator
must act on, the client bundle, and the admin listener. No mitmproxy here: a supervisor only
supervises, and does not load the engine its workers run.
"""

from __future__ import annotations

import logging

from certs import prepare as certs_prepare
from certs.authority import CAError
from certs.authority import CertificateAuthority
from certs.authority import signable_by
from certs.bundle import BundleError
from proxy.server.admin import AdminServer
from proxy.server.admin import AdminState
from proxy.server.errors import StartupError
from proxy.server.settings import Settings

logger = logging.getLogger("aibridge.proxy")


def ensure_ca(settings: Settings) -> CertificateAuthority:
    """Load the configured CA; with none configured and none on disk, create one there."""
    try:
        ca, created = certs_prepare.ensure_ca(
            settings.ca_cert_path,
            settings.ca_key_path,
            brought=settings.ca_cert_file is not None,
            routed_hosts=settings.ca_hosts[0],
        )
    except CAError as e:
        raise StartupError(str(e)) from None
    if created:
        logger.info(
            "generated a new CA",
            extra={"fields": {"cert": str(settings.ca_cert_path), "fingerprint": ca.fingerprint}},
        )
    return ca


def prepare_ca(settings: Settings) -> CertificateAuthority:
    """Load (or create) the CA, warn about what an operator must act on, and write the client
    bundle. Done once per process tree: by the supervisor when there are workers."""
    ca = ensure_ca(settings)
    hosts, uncoverable = settings.ca_hosts
    # what observing leaves tunnelled because this CA cannot sign for it (engine_options)
    signable = settings.observed_items(signable_by(ca))
    tunnelled = [h for h in settings.observed_items() if h not in signable]
    hosts = [h for h in hosts if h not in tunnelled]
    for warning in certs_prepare.ca_warnings(ca, hosts, uncoverable):
        logger.warning(warning)
    if tunnelled:
        logger.warning(
            "Copilot's inline completions are tunnelled, not observed: this CA's name "
            f"constraints do not cover {', '.join(tunnelled)}; create a CA that does with "
            "`aibridge-proxy ca init --force` (clients then trust the new CA), or set "
            "copilot_completions: tunnel to say so"
        )
    try:
        certs_prepare.write_client_bundle(ca, settings.client_bundle_path)
    except BundleError as e:
        raise StartupError(str(e)) from None
    return ca


async def start_admin(state: AdminState, registry, listen: tuple[str, int]) -> AdminServer:
    """Bind the admin listener, or fail with the one line an operator needs."""
    admin = AdminServer(state, registry)
    try:
        host, port = await admin.start(*listen)
    except OSError as e:
        raise StartupError(
            f"admin.listen: cannot bind {listen[0] or '*'}:{listen[1]}: {e.strerror}; "
            "choose another with --admin-listen (or off)"
        ) from None
    logger.info("admin listening", extra={"fields": {"listen": f"{host}:{port}"}})
    return admin
