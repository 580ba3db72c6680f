"""Where a webhook may be sent (SSRF): never to this machine, a private network, a link-local or
multicast address, or a cloud's metadata service — checked when an endpoint is registered and
again, on the address actually connected to, at every delivery (a name may resolve elsewhere by
then). WEBHOOK_ALLOW_PRIVATE lifts it for development and tests, which only ever call loopback."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

# Cloud metadata services beyond 169.254.0.0/16 (link-local, refused anyway): AWS's IPv6 one,
# Alibaba's, Oracle's.
METADATA = {ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "192.0.0.192")}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# IPv6 prefixes that carry an IPv4 address a packet may be routed to: NAT64's well-known prefix
# (the last 32 bits). 6to4 (2002::/16) and Teredo (2001::/32) have ipaddress's own accessors.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refused(address: Address) -> str | None:
    """Why a delivery must not go to this address, or None: anything not globally routable, and an
    IPv6 address that embeds an IPv4 one that is not (6to4, Teredo, NAT64, IPv4-mapped)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refused(embedded)
            return f"an address embedding {embedded}, {reason}" if reason else None
    if address in METADATA or (address.version == 4 and address in ipaddress.ip_network("169.254.169.254/32")):
        return "a cloud metadata address"
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if address.version == 4 and address in ipaddress.ip_network("100.64.0.0/10"):
        return "a carrier-grade NAT address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client behind the relay, where the packet ends up
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address the name resolves to now (a literal address: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why an endpoint URL cannot be registered, or None. https only (plain http too where
    private addresses are allowed: a receiver on loopback in development)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "is not a URL"
    if parts.scheme != "https" and not (allow_private and parts.scheme == "http"):
        return "must use https"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password:
        return "must not carry credentials"
    try:
        parts.hostname.encode("idna")  # a label over 63 characters, say: said here, not by the resolver
    except UnicodeError:
        return f"host {parts.hostname[:80]} is not a valid host name"
    if allow_private:
        return None
    try:
        addresses = resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        return f"host {parts.hostname} does not resolve"
    for address in addresses:
        reason = refused(address)
        if reason is not None:
            return f"host {parts.hostname} resolves to {address}, {reason}"
    return None
