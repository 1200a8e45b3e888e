"""The metrics HTTP listener's caps against the control plane's descriptor share (no sockets):
without a ceiling or with a share of 256 and more they are the old constants, below that they
shrink so that served connections and lingering refusals together fit in half of the share."""

from __future__ import annotations

from l4lb import httpserver
from l4lb.daemon import fd_ceiling
from l4lb.httpserver import Caps, caps_for

DEFAULT = Caps(clients=64, refusing=64, per_peer=8, per_prefix=32)


def test_without_a_ceiling_or_with_a_large_share_the_caps_are_the_constants() -> None:
    assert caps_for(None) == DEFAULT
    for share in (256, 1024, 1 << 20):
        assert caps_for(share) == DEFAULT
    assert DEFAULT.descriptors == 128


def test_small_shares_cut_every_cap() -> None:
    assert caps_for(32) == Caps(clients=8, refusing=8, per_peer=2, per_prefix=4)
    assert caps_for(64) == Caps(clients=16, refusing=16, per_peer=4, per_prefix=8)
    assert caps_for(128) == Caps(clients=32, refusing=32, per_peer=8, per_prefix=16)
    assert caps_for(0) == Caps(clients=4, refusing=4, per_peer=2, per_prefix=2)  # a handful


def test_the_caps_fit_in_half_of_the_share_for_every_limit_with_a_ceiling() -> None:
    """Whatever the daemon's limit, its metrics connections leave at least half of what the
    control plane keeps to the control socket, the health probes and the logs."""
    for nofile in [*range(64, 5000), 65536, 1 << 20]:
        share = nofile - fd_ceiling(nofile)
        caps = caps_for(share)
        assert caps.descriptors <= share // 2, nofile
        assert httpserver.MIN_CLIENTS <= caps.clients == caps.refusing <= httpserver.MAX_CLIENTS
        assert httpserver.MIN_PER_PEER <= caps.per_peer <= caps.per_prefix <= caps.clients
        assert caps.per_peer <= httpserver.MAX_PER_PEER
        assert caps.per_prefix <= httpserver.MAX_PER_PREFIX
    assert caps_for(256 - fd_ceiling(256)).descriptors == 16  # the flood tests' limit
