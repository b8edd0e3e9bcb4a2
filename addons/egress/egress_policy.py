"""
Egress policy: where the proxy itself may connect on a client's behalf.

- Only allowed ports (default 443 and 80), for CONNECTs, plain proxied requests and every
  other dial.
- Every connection we dial for a client (tunnels, plain proxied requests, pass-through to an
  origin) is resolved here, checked, and then dialled to exactly the address that passed the
  check, so a DNS answer cannot change in between. Private, loopback, link-local (cloud
  metadata), CGNAT, unique-local, NAT64 and other non-global ranges are refused with 403 unless
  listed in `aibridge_allowed_private_cidrs`. The gateway's own host and port are always allowed.
- Host patterns (`deny_hosts`, `allow_hosts`) match the CONNECT's host and, for a raw
  tunnel, the name its TLS handshake asks for (SNI), in one IDNA spelling. With such a policy,
  IP-address hosts (any spelling a resolver takes) and TLS handshakes without SNI are refused.
- Failures to dial answer 502 without internal detail.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.proxy import server_hooks

from addons.core.dial_refusals import Blocked
from addons.core.dial_refusals import parse_refusal
from addons.core.dial_refusals import refusal_marker
from addons.core.record import RejectReason
from addons.core.record import record
from addons.core.record import reject
from addons.core.record import reject_reason
from addons.core.responses import plain_response
from addons.core.responses import refusal_response
from addons.egress.upstream_proxy import upstream_address
from addons.routing.snapshot import Routing
from addons.rules.ai_catalog import expand
from addons.rules.destinations import HostPolicy
from addons.rules.destinations import IPAddress
from addons.rules.destinations import IPNetwork
from addons.rules.destinations import PortSet
from addons.rules.destinations import host_key
from addons.rules.destinations import is_forbidden
from addons.rules.destinations import parse_cidrs
from addons.rules.destinations import parse_ip
from addons.rules.destinations import parse_ports

logger = logging.getLogger(__name__)


class EgressPolicy:
    def __init__(self, routing: Routing):
        self.routing = routing
        self.allowed_ports = PortSet([(443, 443), (80, 80)])
        self.allowed_cidrs: tuple[IPNetwork, ...] = ()
        self.upstream: tuple[str, int] | None = None  # the company proxy, when chaining
        self.hosts = HostPolicy()

    def load(self, loader):
        loader.add_option(
            "aibridge_allowed_ports",
            Sequence[str],
            ["443", "80"],
            "Ports clients may CONNECT to: numbers or ranges such as 8000-8999.",
        )
        loader.add_option(
            "aibridge_allowed_private_cidrs",
            Sequence[str],
            [],
            "Non-public address ranges the proxy may still connect to for clients "
            "(e.g. 10.20.0.0/16 for an internal service).",
        )
        loader.add_option(
            "aibridge_deny_hosts",
            Sequence[str],
            [],
            "Host patterns or AI host catalog entries clients may never reach (403 before any "
            "TLS), e.g. *.cursor.sh or cursor.",
        )
        loader.add_option(
            "aibridge_allow_hosts",
            Sequence[str],
            [],
            "If set, the only host patterns (or catalog entries) clients may reach besides the "
            "routed and observed hosts.",
        )

    def configure(self, updated):
        try:
            if "aibridge_allowed_ports" in updated:
                self.allowed_ports = parse_ports(ctx.options.aibridge_allowed_ports)
            if "aibridge_allowed_private_cidrs" in updated:
                self.allowed_cidrs = parse_cidrs(ctx.options.aibridge_allowed_private_cidrs)
            if {"aibridge_deny_hosts", "aibridge_allow_hosts"} & set(updated):
                self.hosts = HostPolicy(
                    expand(ctx.options.aibridge_deny_hosts),
                    expand(ctx.options.aibridge_allow_hosts),
                )
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        if "mode" in updated:
            self.upstream = upstream_address(ctx.options.mode)

    # -- CONNECT: the port -------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if flow.request.port not in self.allowed_ports:
            self._refuse_connect(flow, 403, f"CONNECT to port {flow.request.port} is not allowed")
            return
        if self._refuse_host(flow):
            return
        if blocked := await self._precheck_upstream(flow):
            self._refuse_connect(flow, blocked.status, blocked.public)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or record(flow).self_service:
            return  # never dialled
        request = flow.request
        if self._refuse_host(flow):
            return
        if (
            request.port not in self.allowed_ports
            and self.routing.current.table.lookup(request.host) is None
            and not self._is_gateway(request.host, request.port)
        ):  # a plain proxied request (absolute form) names its port itself
            reject(flow, RejectReason.BLOCKED_PORT)
            flow.response = plain_response(403, f"port {request.port} is not allowed")
        elif blocked := await self._precheck_upstream(flow):
            flow.response = plain_response(blocked.status, blocked.public)

    async def _precheck_upstream(self, flow: http.HTTPFlow) -> Blocked | None:
        """Through an upstream proxy we never see the address it dials, so the destination is
        checked here, on our own resolution (the upstream may resolve differently)."""
        if self.upstream is None:
            return None
        host, port = flow.request.host, flow.request.port
        if self.routing.current.table.lookup(host) is not None or self._is_gateway(host, port):
            return None
        try:
            await self._resolve_allowed(host, port)
        except Blocked as e:
            logger.warning("refused %s:%s before the upstream proxy: %s", host, port, e)
            return e
        return None

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A tunnel's dial failed or was refused: answer without the engine's detail."""
        assert flow.response is not None
        if flow.response.status_code != 502 or reject_reason(flow) is not None:
            return
        refusal = parse_refusal(flow.response.get_text(strict=False))
        if refusal is not None:
            self._refuse_connect(flow, *refusal)
        else:
            self._refuse_connect(flow, 502, "cannot connect to the destination")

    def _refuse_connect(self, flow: http.HTTPFlow, status: int, text: str) -> None:
        reject(
            flow, RejectReason.BLOCKED_DESTINATION if status == 403 else RejectReason.DIAL_FAILED
        )
        flow.response = refusal_response(status, text)

    # -- every dial: resolve, check, pin -------------------------------------------------------

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None or server.via is not None:
            return  # via an upstream proxy: that proxy resolves (see upstream chaining)
        host, port = server.address[0], server.address[1]
        if self._is_gateway(host, port):
            return
        try:
            address = await self._resolve_allowed(host, port)
        except Blocked as e:
            logger.warning("refused connection to %s:%s: %s", host, port, e)
            server.error = refusal_marker(e)
            return
        except Exception:  # fail closed
            logger.exception("egress check failed for %s:%s", host, port)
            server.error = refusal_marker(Blocked(502, "cannot connect to the destination", ""))
            return
        server.address = (address, port)

    def _refuse_host(self, flow: http.HTTPFlow) -> bool:
        """Answer 403 if the host policy refuses this host (the gateways are never refused)."""
        host = flow.request.host
        if any(t.host == host.lower() for t in self.routing.current.gateways()):
            return False
        if self.upstream is not None and (host.lower(), flow.request.port) == self.upstream:
            return False
        why = self.hosts.literal_refusal(host) or self.hosts.refusal(
            host, self.routing.current.intercepts(host)
        )
        if why is None:
            return False
        reject(flow, RejectReason.DENIED_HOST)
        flow.response = refusal_response(403, why)
        return True

    def tunnel_refusal(self, connect_host: str, client_hello: bytes, sni: str | None) -> str | None:
        """Why a raw tunnel is refused on its TLS handshake: the host policy applies to the
        name the handshake asks for too (a CDN serves many names on one address), and with a
        policy set, a TLS handshake must name its host."""
        if not self.hosts.active:
            return None
        if sni is None:
            if client_hello[:1] == b"\x16":
                return f"the TLS handshake to {connect_host} names no host (SNI), which the egress policy needs"
            return (
                None  # not TLS: a protocol without a name to check (see the manual, Security model)
            )
        if host_key(sni) == host_key(connect_host):
            return None  # checked on the CONNECT already
        return self.hosts.refusal(sni, self.routing.current.intercepts(sni))

    def _is_gateway(self, host: str, port: int) -> bool:
        """The gateway (and the upstream proxy we chain to) are always reachable."""
        if self.upstream is not None and (host.lower(), port) == self.upstream:
            return True
        return self.routing.current.is_gateway(host, port)

    def _allowed(self, ip: IPAddress) -> bool:
        return not is_forbidden(ip) or any(ip in net for net in self.allowed_cidrs)

    async def _resolve_allowed(self, host: str, port: int) -> str:
        """The address to dial for a client, if the port and the destination are allowed."""
        if port not in self.allowed_ports:
            raise Blocked(403, f"port {port} is not allowed", f"{host}:{port}: port not allowed")
        ip = parse_ip(host)
        if ip is not None:
            candidates = [ip]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise Blocked(
                    502, "cannot resolve the destination", f"resolve failed: {e}"
                ) from None
            candidates = [parse_ip(info[4][0]) for info in infos]
            candidates = [c for c in candidates if c is not None]
            if not candidates:
                raise Blocked(502, "cannot resolve the destination", "no addresses")
        for candidate in candidates:
            if self._allowed(candidate):
                return str(candidate)
        raise Blocked(
            403,
            "destination is not allowed",
            f"{host} resolves only to non-public addresses ({', '.join(map(str, candidates))})",
        )
