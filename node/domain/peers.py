"""Which hosts a calling AE title may connect from.

An entry is an IP address, a network in CIDR form, or a host name; host names are resolved by
the caller-supplied ``resolve`` when an association arrives (DNS changes need no restart).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(entry: str) -> Network | None:
    """The network an address or CIDR entry names, or None for a host name."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def host_allowed(
    address: str, entries: Iterable[str], resolve: Callable[[str], list[str]]
) -> bool:
    """True when ``address`` (the peer's IP) matches one of ``entries``."""
    try:
        peer = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    for entry in entries:
        network = parse_network(entry)
        if network is not None:
            if peer in network:
                return True
            continue
        for resolved in resolve(entry):
            if parse_network(resolved) == parse_network(str(peer)):
                return True
    return False
