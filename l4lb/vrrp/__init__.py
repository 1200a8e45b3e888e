"""VRRP for l4lb, wire-compatible with keepalived 2.2: the pure core, no I/O.

`packet` encodes and validates advertisements (RFC 5798 v3 over IPv4/IPv6, RFC 3768 v2),
`announce` builds gratuitous ARP / unsolicited NA frames, `fsm` is the per-instance state machine
that turns events into actions. The raw sockets, VIP handling and timers that execute those
actions live in the I/O layer built on top of these modules. See docs/vrrp-internals.md.
"""
