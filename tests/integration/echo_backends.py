"""Echo backends for integration tests, run as their own process: `python echo_backends.py N`.

Starts N asyncio echo servers on 127.0.0.1 ephemeral ports, prints their ports on one line,
and runs until stdin closes (so the test that started it ends it by closing the pipe).
"""

from __future__ import annotations

import asyncio
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(n: int) -> None:
    servers = [await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024) for _ in range(n)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
