"""TCP backends that answer every connection with their name and close (netns test helper).

Usage: python3 name_backends.py NAME=ADDRESS:PORT ... Prints {"event": "ready"} once every
server listens, and runs until SIGTERM / SIGINT. A backend named "@peer" answers with the peer
address it sees instead (transparent mode: the client's, or the balancer's).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys


async def main(specs: list[str]) -> int:
    servers = []
    for spec in specs:
        name, _, endpoint = spec.partition("=")
        host, _, port = endpoint.rpartition(":")

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         name: str = name) -> None:
            try:
                text = str(writer.get_extra_info("peername")[0]) if name == "@peer" else name
                writer.write(text.encode())
                await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        servers.append(await asyncio.start_server(answer, host.strip("[]"), int(port),
                                                  backlog=512))
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
