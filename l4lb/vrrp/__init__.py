"""VRRP for l4lb, wire-compatible with keepalived 2.2.

The pure core (no I/O): `packet` encodes and validates advertisements (RFC 5798 v3 over
IPv4/IPv6, RFC 3768 v2), `announce` builds gratuitous ARP / unsolicited NA frames, `fsm` is the
per-instance state machine that turns events into actions, `settings` the validated
configuration of one instance. The I/O layer: `io` (raw sockets) and `instance` (one instance on
the daemon's event loop, executing the actions; VIPs through l4lb.net.vip). See
docs/vrrp-internals.md and docs/ha.md.
"""
