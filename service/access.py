"""Who may send to the SCP: calling AE titles and peer addresses, as data
(`network.allowed_calling_ae_titles`, `network.allowed_hosts`; empty lists
admit anyone). The called AE title is enforced by the SCP itself."""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Iterable

__all__ = ["AccessPolicy", "Refusal"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refusal(str, enum.Enum):
    """Why an association request is rejected, with its A-ASSOCIATE-RJ
    (result, source, reason) of PS3.8 9.3.4: rejected-permanent by the DICOM
    UL service-user."""

    CALLING_AE_TITLE = "calling_ae_title_not_allowed"
    HOST = "host_not_allowed"

    @property
    def reject_codes(self) -> tuple[int, int, int]:
        # 3: calling-AE-title-not-recognized; 1: no-reason-given (there is no
        # code for an address).
        return (0x01, 0x01, 0x03) if self is Refusal.CALLING_AE_TITLE else (0x01, 0x01, 0x01)


@dataclass(frozen=True)
class AccessPolicy:
    """The callers the SCP admits.

    Parameters
    ----------
    calling_ae_titles : frozenset of str
        Admitted calling AE titles (compared without padding spaces); empty
        admits any.
    networks : tuple of ipaddress networks
        Admitted peer addresses; empty admits any.
    """

    calling_ae_titles: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, calling_ae_titles: Iterable[str], networks: Iterable[IPNetwork]) -> AccessPolicy:
        return cls(frozenset(t.strip() for t in calling_ae_titles), tuple(networks))

    def refusal(self, calling_ae_title: str, address: str) -> Refusal | None:
        """Why a caller is refused, or None when it is admitted."""
        if self.networks and not self._host_allowed(address):
            return Refusal.HOST
        if self.calling_ae_titles and calling_ae_title.strip() not in self.calling_ae_titles:
            return Refusal.CALLING_AE_TITLE
        return None

    def _host_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False  # not an address (e.g. a Unix socket): refused when hosts are restricted
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)
