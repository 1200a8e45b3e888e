# cython: language_level=3
"""l4lb._dataplane: the only Python-visible compiled module (the C data plane under Cython).

The class Dataplane (added by the relay work) wraps src_ext/core/dp.h; the module-level functions
from table_api.pxi expose the pure table/hash/Maglev/scheduler code so tests can compare it with
the Python twins in l4lb/table/.
"""

include "table_api.pxi"
