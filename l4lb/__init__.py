"""l4lb: a Linux L4 (TCP/UDP) load balancer with a C data plane and a Python control plane."""

__version__ = "0.1.0"
