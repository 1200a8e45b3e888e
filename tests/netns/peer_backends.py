"""TCP backends that answer every connection with the peer address they see, then close.

A netns test helper for transparent mode: the backend names the address the connection came
from, so the test can tell the client's address from the balancer's.
Usage: python3 peer_backends.py ADDRESS:PORT ... ("[2001:db8::5]:9000" for IPv6). Prints
{"event": "ready"} once every server listens, and runs until SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(str(writer.get_extra_info("peername")[0]).encode())
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(endpoints: list[str]) -> int:
    servers = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        servers.append(await asyncio.start_server(answer, host.strip("[]"), int(port)))
    print(json.dumps({"event": "ready"}), flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    await done.wait()
    for server in servers:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
