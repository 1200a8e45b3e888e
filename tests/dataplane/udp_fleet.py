"""Many UDP client sockets (one client port, so one flow, each) in a child process.

Ten thousand flows need ten thousand client sockets plus the balancer's ten thousand upstream
sockets; one process may not hold both (RLIMIT_NOFILE, which the tests cannot raise), and a
child also sends and receives without waiting for the test process's GIL. The child runs this
file as a script (stdlib only) and obeys JSON lines on stdin, answering one JSON line each:

  (start)                         -> {"ports": [client port of socket i, ...]}
  {"op": "round", "dest": [host, port], "tag": str, "timeout": s, "window": n}
      socket i sends f"{tag}{i}"; at most `window` questions are in flight, so no socket buffer
      overflows -> {"answers": [[answer text, source host, source port] or null, ...]}
  {"op": "rounds", "dest": ..., "rounds": r, "timeout": s, "window": n}
      r rounds in a row; every answer must equal its question (an echo backend)
      -> {"answered": n, "missing": n, "wrong": n}
  {"op": "close"}                 -> {"closed": true}, then the child exits

FleetProcess is the test side: it starts the child, sends commands, and always ends it.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import socket
import subprocess
import sys
import time
from typing import Any

BUFFER = 1 << 20  # SO_SNDBUF of each client socket
RECV_MAX = 65535
ANSWER_TIMEOUT = 120.0  # seconds the parent waits for any one answer line (hard ceiling)

Answer = tuple[str, tuple[str, int]]


class Fleet:
    """The child's sockets and its send/receive loop."""

    def __init__(self, host: str, count: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for i in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self.socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            sock.bind((host, 0))
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, i)
        self.ports = [s.getsockname()[1] for s in self.socks]

    def round(self, dest: tuple[str, int], tag: str, timeout: float,
              window: int) -> list[tuple[bytes, Any] | None]:
        answers: list[tuple[bytes, Any] | None] = [None] * len(self.socks)
        deadline = time.monotonic() + timeout
        following = in_flight = done = 0
        prefix = tag.encode()
        while done < len(self.socks):
            while following < len(self.socks) and in_flight < window:
                self.socks[following].sendto(prefix + str(following).encode(), dest)
                following += 1
                in_flight += 1
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in self.sel.select(min(left, 0.5)):
                i = key.data
                try:
                    data, src = self.socks[i].recvfrom(RECV_MAX)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                if answers[i] is None:
                    answers[i] = (data, src)
                    in_flight -= 1
                    done += 1
        return answers

    def close(self) -> None:
        self.sel.close()
        for sock in self.socks:
            sock.close()


def _serve(host: str, count: int) -> None:
    fleet = Fleet(host, count)
    _say({"ports": fleet.ports})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "close":
            fleet.close()
            _say({"closed": True})
            return
        dest = (cmd["dest"][0], int(cmd["dest"][1]))
        if cmd["op"] == "round":
            got = fleet.round(dest, cmd["tag"], cmd["timeout"], cmd["window"])
            _say({"answers": [None if a is None else
                              [a[0].decode("latin-1"), str(a[1][0]), int(a[1][1])]
                              for a in got]})
        elif cmd["op"] == "rounds":
            answered = missing = wrong = 0
            deadline = time.monotonic() + cmd["timeout"]
            for r in range(cmd["rounds"]):
                tag = f"r{r}-"
                got = fleet.round(dest, tag, max(0.1, deadline - time.monotonic()),
                                  cmd["window"])
                for i, a in enumerate(got):
                    if a is None:
                        missing += 1
                    elif a[0] != f"{tag}{i}".encode():
                        wrong += 1
                    else:
                        answered += 1
            _say({"answered": answered, "missing": missing, "wrong": wrong})


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class FleetProcess:
    """Test side: a child process holding `count` UDP client sockets on host."""

    def __init__(self, host: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), host, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.ports: list[int] = self._answer()["ports"]  # client port of socket i
        except BaseException:
            self.close()
            raise

    def round(self, dest: tuple[str, int], tag: str = "q", timeout: float = 30.0,
              window: int = 256) -> list[Answer | None]:
        """Socket i sends f"{tag}{i}" to dest: per socket (answer text, source) or None."""
        self._send({"op": "round", "dest": list(dest), "tag": tag, "timeout": timeout,
                    "window": window})
        raw = self._answer(timeout + 10)["answers"]
        return [None if a is None else (a[0], (a[1], a[2])) for a in raw]

    def rounds(self, dest: tuple[str, int], rounds: int, timeout: float,
               window: int = 256) -> dict[str, int]:
        """`rounds` echo rounds: {"answered", "missing", "wrong"} over all of them."""
        self._send({"op": "rounds", "dest": list(dest), "rounds": rounds, "timeout": timeout,
                    "window": window})
        found: dict[str, int] = self._answer(timeout + 10)
        return found

    def close(self) -> None:
        """Close the child's sockets and end it (killed, by its pid, if it does not exit)."""
        if self.proc.poll() is None:
            try:
                self._send({"op": "close"})
                self._answer(10)
            except (OSError, ValueError, TimeoutError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def _send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def _answer(self, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], min(timeout, ANSWER_TIMEOUT))
        if not ready:
            raise TimeoutError(f"UDP fleet child gave no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise ValueError(f"UDP fleet child exited ({self.proc.poll()})")
        found: dict[str, Any] = json.loads(line)
        return found


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
