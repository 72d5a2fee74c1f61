"""Free TCP ports for servers that tests and benchmarks start on 127.0.0.1."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now, chosen *below* the kernel's ephemeral range.

    A port the kernel handed out as ephemeral can be taken by any outgoing connection (SeaweedFS
    and the services open many) between the moment we pick it and the moment a server binds it;
    ports outside that range are only ever taken by someone binding them on purpose.
    """
    low, _high = _ephemeral_range()
    candidates = random.sample(range(_LOW, max(low, _LOW + n * 4)), k=min(2000, low - _LOW))
    held: list[socket.socket] = []
    try:
        for port in candidates:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [h.getsockname()[1] for h in held]
        raise RuntimeError(f"no {n} free ports between {_LOW} and {low}")
    finally:
        for s in held:
            s.close()
