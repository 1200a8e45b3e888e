"""Networking helpers of the control plane: listener sockets (later: VIPs through pyroute2)."""
