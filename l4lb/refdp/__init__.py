"""l4lb.refdp: the pure-Python reference data plane, the tests' oracle and a model of the C core.

`Dataplane` implements the DataplaneAPI of l4lb/dataplane.py with one selectors loop per worker
thread and splice(2) relays; it is slow compared with the C core but behaves the same.
"""

from l4lb.refdp.dataplane import Dataplane

__all__ = ["Dataplane"]
