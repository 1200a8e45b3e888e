"""Networking of the control plane: listener sockets, and VIPs and links through pyroute2."""
