"""bench: the comparative benchmark of l4lb against direct, HAProxy and nginx (bench/run.py)."""
