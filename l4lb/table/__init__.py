"""l4lb.table: the forwarding table (blob format, flow hash, Maglev, schedulers) and its builder.

The modules here are pure (no I/O) Python twins of src_ext/core/{table,hash,maglev,sched}.c and
follow docs/forwarding-table.md to the bit; the tests run both on the same inputs. builder.py
turns a Config plus backend states into a blob; the reference data plane parses it with blob.py.
"""

from l4lb.table.blob import (
    BackendRec,
    ProxyFromRec,
    ServiceRec,
    Table,
    TableError,
    digest,
    pack,
    parse,
)
from l4lb.table.hashing import flow_hash, flow_key, hash64
from l4lb.table.maglev import maglev_fill

__all__ = [
    "BackendRec",
    "ProxyFromRec",
    "ServiceRec",
    "Table",
    "TableError",
    "digest",
    "flow_hash",
    "flow_key",
    "hash64",
    "maglev_fill",
    "pack",
    "parse",
]
