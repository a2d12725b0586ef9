"""SSRF guard: refuse to connect to private, loopback, link-local or reserved addresses.

The check runs inside the connector's resolver, so the address that is checked is the address that is
connected to (no DNS-rebinding gap), and it applies to every redirect hop as well. IP-literal URLs skip
aiohttp's resolver, so `check_literal` covers them before a request is sent.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(OSError):
    """Every address of a host is in a refused range."""


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class AddressPolicy:
    """Public addresses pass; others only inside the configured allowlisted networks."""

    def __init__(self, allow_networks: list[str]) -> None:
        self.allowed = [ipaddress.ip_network(c, strict=False) for c in allow_networks]

    def permits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return is_public(ip) or any(ip in net for net in self.allowed)

    def check_literal(self, host: str) -> bool | None:
        """True/False for an IP-literal host, None for a name (checked at resolution)."""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        return self.permits(host.strip("[]"))


class GuardedResolver(AbstractResolver):
    """Resolver with static overrides (host[:port] -> ip:port) that drops refused addresses."""

    def __init__(self, policy: AddressPolicy, overrides: dict[str, str] | None = None) -> None:
        self.policy = policy
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self._inner = ThreadedResolver()

    def _override(self, host: str, port: int) -> tuple[str, int] | None:
        target = self.overrides.get(f"{host}:{port}") or self.overrides.get(host)
        if target is None:
            return None
        ip, _, tport = target.rpartition(":")
        return ip.strip("[]"), int(tport)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        host_l = host.lower().rstrip(".")
        override = self._override(host_l, port)
        if override is not None:
            ip, tport = override
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            results: list[Any] = [
                {"hostname": host, "host": ip, "port": tport, "family": fam, "proto": 0, "flags": socket.AI_NUMERICHOST}
            ]
        else:
            results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.permits(r["host"])]
        if not allowed:
            raise BlockedAddress(f"{host} resolves only to refused addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
