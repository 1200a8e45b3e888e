"""Write prepared Ethernet frames on an interface with an AF_PACKET socket (netns test helper).

Usage: python3 inject.py IFNAME FILE, FILE a JSON list of hex frames. Sends each frame once,
0.5 ms apart (so the receiver's socket buffer never overflows), prints {"event": "sent",
"count": N} and exits. Used to throw hostile packets at a VRRP node from another namespace.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> int:
    ifname, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        frames = [bytes.fromhex(h) for h in json.load(f)]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    count = 0
    for frame in frames:
        sock.send(frame)
        count += 1
        time.sleep(0.0005)
    sock.close()
    print(json.dumps({"event": "sent", "count": count}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
