"""Which names stay on this machine: the one rule the server's Host check, ``serve``'s and
``rpc-server``'s bind-address warnings share (standard library only, so the CLI loads it
without the server)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def ip_of(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``name`` spells (``[::1]`` and a ``%zone`` suffix allowed), or None."""
    try:
        return ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_loopback(name: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761), ``ip6-localhost``/``ip6-loopback`` (Debian's
    names for ::1) or a loopback address such as 127.0.0.2 or ::1."""
    name = name.strip().lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    ip = ip_of(name)
    return ip is not None and ip.is_loopback
