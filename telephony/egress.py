"""Where a call's agent may make the bridge connect: agent WebSockets and ``play`` downloads.

A call's ``agentUrl`` and an agent's ``play`` URLs come from outside (a webhook query, an agent's
message), so without a rule they turn the bridge into a proxy into its own network: loopback
services, the VPC, the cloud metadata endpoint. The rule: every address a host resolves to must be
public, unless the operator allow-lists it:

- ``VOICE_BRIDGE_AGENT_ALLOW_HOSTS``: host names (or IP literals) trusted as they are, e.g.
  ``localhost,agents.internal``; no address check for those names;
- ``VOICE_BRIDGE_AGENT_ALLOW_NETS``: CIDRs whose addresses are allowed, e.g. ``10.0.0.0/8,::1/128``.

Refused otherwise: loopback, private (RFC 1918, CGNAT, ULA), link-local, multicast, unspecified,
reserved, and the metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200); an
IPv4-mapped IPv6 address is judged as its IPv4 address. *Every* address of a name must pass (a name
with one public and one private address is refused), and the connection then goes to an address
that was checked, never to a second DNS answer (no rebinding between check and connect): the
WebSocket client is handed the checked address, and HTTP downloads go through ``GuardedBackend``,
which resolves and checks inside the connection pool, for every connection, redirects included.

Resolution runs off the event loop (``loop.getaddrinfo`` uses the default executor).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from tts_core.errors import Forbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
))
LOOPBACK_NETS: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class EgressRefused(Forbidden):
    """A destination the policy refuses. ``str()`` is for the operator's log (it names the host and
    address); what a remote party may be told (``message``) is ``PUBLIC_MESSAGE``, which names
    nothing."""

    PUBLIC_MESSAGE = "address not allowed"
    kind = "egress_refused"

    @property
    def message(self) -> str:
        return self.PUBLIC_MESSAGE


def address_category(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination (``loopback``, ``private``, ...), or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if isinstance(ip, ipaddress.IPv6Address) and (ip.sixtofour is not None or ip.teredo is not None):
        return "tunnel"  # an IPv4 address inside, which may be anything
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
              ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("reserved", ip.is_reserved), ("private", ip.is_private))
    for name, hit in checks:
        if hit:
            return name
    if not ip.is_global:  # CGNAT 100.64/10, 6to4 and other special ranges
        return "private"
    return None


def parse_nets(value: str | None) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, ::1"`` -> networks (a bare address is a /32 or /128); ValueError if invalid."""
    nets = []
    for item in (value or "").split(","):
        if item.strip():
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
    return tuple(nets)


def parse_hosts(value: str | None) -> frozenset[str]:
    return frozenset(h.strip().lower().rstrip(".") for h in (value or "").split(",") if h.strip())


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations a call may reach (see the module docstring)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_nets: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: typing.Any) -> EgressPolicy:
        nets = parse_nets(settings.agent_allow_nets)
        if settings.insecure_dev:  # local development: a loopback agent works without settings
            nets = nets + LOOPBACK_NETS
        hosts = parse_hosts(settings.agent_allow_hosts)
        default_host = _ws_host(settings.default_agent)
        if default_host:  # the operator named this host in the configuration: trusted
            hosts = hosts | {default_host.lower().rstrip(".")}
        return cls(allow_hosts=hosts, allow_nets=nets)

    def literal_refused(self, url: str) -> bool:
        """True when ``url``'s host is an IP literal this policy refuses: known without DNS, so
        the webhook can answer 422 at once (names are checked when the call connects)."""
        host = _ws_host(url) or ""
        if not host or self.host_trusted(host):
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return not self.address_allowed(ip)

    def host_trusted(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allow_hosts

    def address_allowed(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self.allow_nets):
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if mapped is not None and any(mapped in net for net in self.allow_nets):
            return True
        return address_category(ip) is None

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: all checked, or ``EgressRefused``.

        A trusted name is returned as it is (the connection resolves it); an unresolvable one is
        refused like a forbidden one (which of the two it was is for the log only)."""
        if not host:
            raise EgressRefused("empty host")
        if self.host_trusted(host):
            return [host]
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise EgressRefused(f"{host}: does not resolve ({exc})") from None
            addresses = []
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise EgressRefused(f"{host}: no addresses")
        for ip in addresses:
            if not self.address_allowed(ip):
                raise EgressRefused(f"{host} resolves to {ip} ({address_category(ip)}), which is not "
                                    "allowed (VOICE_BRIDGE_AGENT_ALLOW_NETS/_ALLOW_HOSTS)")
        return [str(ip) for ip in addresses]


def _ws_host(url: str) -> str | None:
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        return None
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, but every TCP connection goes through ``EgressPolicy.resolve``
    and then to a checked address (TLS still verifies the URL's host name: httpcore passes it as
    ``server_hostname``, not the address)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(address, port, timeout=timeout,
                                                       local_address=local_address,
                                                       socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not a permitted destination")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def guarded_client(policy: EgressPolicy, *, timeout_s: float = 10.0) -> httpx.AsyncClient:
    """An HTTP client whose every connection obeys ``policy``. No redirects are followed (callers
    follow them by hand, bounded) and no proxy from the environment is used (a proxy would make
    the check meaningless)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    pool = transport._pool  # httpx builds its pool without a way to pass a network backend
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    pool._network_backend = GuardedBackend(policy)
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout_s),
                             follow_redirects=False, trust_env=False)
