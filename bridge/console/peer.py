"""Who is on the other end of a loopback connection: its user, as the kernel knows it.

Without ``admin.token`` the admin server's private paths answer on a loopback address only, and
loopback is shared by every user of the host: another local user could list events, trigger test
events and purge dead letters. So a connection to them must come from the bridge's own user or
root. For TCP there is no ``SO_PEERCRED``; Linux lists every socket in ``/proc/net/tcp`` and
``/proc/net/tcp6`` with its owner's uid, found by the connection's two addresses.

Only a connection the client still holds open counts: a socket its process closed (an orphan in
FIN_WAIT or TIME_WAIT, whose request may still be read) is listed with uid 0 and is not trusted.
Off Linux the user cannot be known, and loopback is trusted as before: :func:`peer_uid` says
:data:`UNKNOWABLE`. On Linux a missing table (``/proc`` mounted without it) trusts no one.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from pathlib import Path
from typing import Final

PROC_NET: Final = Path("/proc/self/net")
"""This process's network namespace; ``/proc/net`` is absent where ``/proc`` shows pids only."""
ESTABLISHED: Final = "01"
UNKNOWABLE: Final = -1
"""No socket table to look in (not Linux)."""


def proc_address(host: str, port: int) -> str:
    """An address as ``/proc/net/tcp{,6}`` writes it: the IP's 32-bit words in host byte order
    (little-endian here), hex, upper case; a colon; the port, hex."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    words = struct.unpack(f"<{len(ip.packed) // 4}I", ip.packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def peer_uid(peer: tuple[str, int], local: tuple[str, int], proc: Path = PROC_NET) -> int | None:
    """The uid owning the client socket of a connection from ``peer`` to ``local`` (both as the
    server sees them); None when no such socket is listed (it closed meanwhile), or
    :data:`UNKNOWABLE`."""
    peer, local = _unmapped(peer), _unmapped(local)
    table = "tcp6" if ":" in peer[0] else "tcp"
    try:
        text = (proc / table).read_text()
    except OSError:
        return UNKNOWABLE if sys.platform != "linux" else None
    # The client's socket: its own address is the peer's, its remote one is ours.
    wanted = f" {proc_address(*peer)} {proc_address(*local)} "
    at = text.find(wanted)
    if at < 0:
        return None
    line = text[at : text.find("\n", at)].split()
    # local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
    return int(line[6]) if line[2] == ESTABLISHED else None


def _unmapped(address: tuple[str, int]) -> tuple[str, int]:
    """An IPv4 client of a dual-stack listener shows as ``::ffff:a.b.c.d``; its socket is an IPv4
    one, listed in ``tcp``."""
    host, port = address
    if host.startswith("::ffff:"):
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped), port
    return host, port


def is_own(uid: int | None) -> bool:
    """Whether a peer's uid may use the private paths without a token: the bridge's own user,
    root, or a host where the user cannot be known."""
    return uid is not None and (uid == UNKNOWABLE or uid in (os.getuid(), 0))
