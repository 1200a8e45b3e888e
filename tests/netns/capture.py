"""Capture VRRP adverts, gratuitous ARPs and neighbour advertisements on an interface (tests).

Usage: python3 capture.py IFNAME SECONDS. Opens an AF_PACKET socket for every protocol on
IFNAME with kernel receive timestamps (SO_TIMESTAMPNS), prints {"event": "ready"}, then one
line per interesting frame, {"event": "frame", "ts": kernel timestamp (s), "hex": frame}, for
SECONDS seconds (or until SIGTERM), and {"event": "done"}. Interesting: ARP, IPv4 protocol 112,
IPv6 next header 112, and ICMPv6 type 136 (neighbour advertisement). No tcpdump needed.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def interesting(frame: bytes) -> bool:
    if len(frame) < 14:
        return False
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806:
        return True
    if ethertype == 0x0800 and len(frame) >= 34:
        return frame[23] == 112
    if ethertype == 0x86DD and len(frame) >= 55:
        next_header = frame[20]
        return next_header == 112 or (next_header == 58 and frame[54] == 136)
    return False


def main() -> int:
    ifname, seconds = sys.argv[1], float(sys.argv[2])
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((ifname, 0))
    print(json.dumps({"event": "ready"}), flush=True)
    deadline = time.monotonic() + seconds
    while not stop[0]:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([sock], [], [], min(left, 0.2))
        if not readable:
            continue
        frame, ancdata, _flags, addr = sock.recvmsg(65535, 64)
        if addr[2] == socket.PACKET_OUTGOING or not interesting(frame):
            continue
        ts = time.time()
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack("=qq", data[:16])
                ts = sec + nsec / 1e9
        print(json.dumps({"event": "frame", "ts": ts, "hex": frame.hex()}), flush=True)
    print(json.dumps({"event": "done"}), flush=True)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
