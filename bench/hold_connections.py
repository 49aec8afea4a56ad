#!/usr/bin/env python3
"""Opens COUNT idle TCP connections to HOST:PORT and holds them.

Usage: hold_connections.py HOST PORT COUNT [upgrade]

Prints "open N" once all are established (or "failed ..." and exits 1),
then waits until stdin closes. Used by bench/compare.sh to measure each
proxy's memory per idle client connection: the connections send nothing,
as a client that connected and has not spoken yet (or a slow one) would.
With "upgrade", each connection first asks for a WebSocket-style upgrade
and counts as open once the 101 has come back, then sends nothing more,
as an idle WebSocket (bench/idle-memory.sh).
"""

import resource
import socket
import sys


def main() -> int:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    upgrade = sys.argv[4:] == ["upgrade"]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError) as e:
            print(f"failed: cannot raise the open-files limit to {want}: {e}", flush=True)
            return 1
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    conns = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
            if upgrade:
                upgraded(s)
        except (OSError, ValueError) as e:
            print(f"failed: connection {i + 1} of {count}: {e}", flush=True)
            return 1
        conns.append(s)
    print(f"open {len(conns)}", flush=True)
    sys.stdin.read()
    return 0


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def upgraded(s: socket.socket) -> None:
    """Asks for an upgrade on s; raises ValueError unless a 101 answers."""
    s.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ValueError(f"closed before the upgrade was answered: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        status = head.split(b"\r\n", 1)[0]
        raise ValueError(f"the upgrade was refused: {status!r}")


if __name__ == "__main__":
    sys.exit(main())
