"""Compile the benchmark's small C helpers (bench/csrc/*.c) into bench/build/, once per source.

The helpers are the parts that Python is too slow for: the vCPU distance probe (pingpong), the
UDP load generator (udpgen) and the UDP echo backend (udpecho). A binary's name carries the hash
of its source, so an edited source is rebuilt and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "csrc"
BUILD = HERE / "build"
HELPERS = ("pingpong", "udpgen", "udpecho")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-pthread"]


def source(name: str) -> Path:
    """The C source of a helper."""
    return SRC / f"{name}.c"


def binary_path(name: str) -> Path:
    """Where the helper's binary for the current source lives (built or not)."""
    digest = hashlib.sha256(source(name).read_bytes()).hexdigest()[:12]
    return BUILD / f"{name}-{digest}"


def build(name: str, cc: str = "gcc") -> Path:
    """The helper's binary, compiled first if needed; RuntimeError with gcc's output on failure."""
    out = binary_path(name)
    if out.exists():
        return out
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    res = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(source(name))],
                         capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"cannot compile {source(name)}:\n{res.stderr}")
    tmp.rename(out)
    return out


def build_all() -> dict[str, Path]:
    """Every helper, compiled as needed."""
    return {name: build(name) for name in HELPERS}
