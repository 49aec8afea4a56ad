#!/usr/bin/env python3
"""Opens COUNT idle TCP connections to HOST:PORT and holds them.

Prints "open N" once all are established (or "failed ..." and exits 1),
then waits until stdin closes. Used by bench/compare.sh to measure each
proxy's memory per idle client connection: the connections send nothing,
as a client that connected and has not spoken yet (or a slow one) would.
"""

import resource
import socket
import sys


def main() -> int:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
        except OSError as e:
            print(f"failed: connection {i + 1} of {count}: {e}", flush=True)
            return 1
        conns.append(s)
    print(f"open {len(conns)}", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
