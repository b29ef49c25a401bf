"""Which program writes the bridge's NAT and published ports: nft, or iptables.

nftables.py and iptables.py offer the same functions (available, has_table, create_table,
delete_table, add_port, remove_port, published), so the network code calls `backend()`
and does not care which.  nft where the host has it; iptables where that is what the
host has.  PYKVM_NAT=nft or PYKVM_NAT=iptables chooses one (read at each run: change it
only with no network, after `pykvm container network rm`).
"""
from __future__ import annotations

import os
from types import ModuleType

from pykvm.container.runtime import iptables, nftables
from pykvm.errors import ConfigError

__all__ = ["backend", "BACKENDS"]

BACKENDS = {"nft": nftables, "iptables": iptables}


def backend() -> ModuleType | None:
    """The module to use, or None where neither program is installed."""
    chosen = os.environ.get("PYKVM_NAT", "")
    if chosen:
        if chosen not in BACKENDS:
            raise ConfigError(f"PYKVM_NAT={chosen!r}: want nft or iptables")
        module = BACKENDS[chosen]
        return module if module.available() else None
    return next((m for m in BACKENDS.values() if m.available()), None)
