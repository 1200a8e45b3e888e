"""Tests of bench/udploss.py: the UDP socket table parser and the loss attribution."""

from __future__ import annotations

from bench import udploss

HEAD = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n")


def _line(sl: int, lport: int, rport: int, inode: int, drops: int) -> str:
    return (f"  {sl}: 0100007F:{lport:04X} 0100007F:{rport:04X} 07 00000000:00000000 00:00000000 "
            f"00000000     0        0 {inode} 2 0000000000000000 {drops}\n")


def test_parse_reads_ports_inode_and_drops() -> None:
    socks = udploss.parse_udp_table(HEAD + _line(1, 21003, 0, 111, 7) + "garbage\n")
    assert socks == [udploss.UdpSocket(inode=111, local_port=21003, remote_port=0, drops=7)]


def test_drops_by_role_through_a_balancer() -> None:
    before = udploss.parse_udp_table(HEAD + _line(1, 21003, 0, 1, 5) + _line(2, 21007, 0, 2, 1))
    after = udploss.parse_udp_table(
        HEAD + _line(1, 21003, 0, 1, 15)      # listener: +10
        + _line(2, 21007, 0, 2, 4)            # backend: +3
        + _line(3, 40000, 21007, 3, 6)        # upstream socket created in the run: 6
        + _line(4, 40001, 21007, 4, 0)        # upstream without drops
        + _line(5, 50000, 9999, 5, 99))       # unrelated socket
    got = udploss.socket_drops(before, after, front=21003, back=21007)
    assert got == {"lb_listener": 10, "backend": 3, "lb_upstream": 6}


def test_direct_run_has_no_balancer_roles() -> None:
    after = udploss.parse_udp_table(HEAD + _line(1, 21007, 0, 1, 2) + _line(2, 40000, 21007, 2, 3))
    got = udploss.socket_drops([], after, front=21007, back=21007)
    assert got == {"backend": 2, "generator_receive": 3}


def test_attribute_accounts_for_every_lost_datagram() -> None:
    gen = {"offered": 1000.0, "received": 900.0, "send_errors": 2.0, "blocked": 3.0,
           "rx_drops": 5.0}
    out = udploss.attribute(gen, {"lb_listener": 40, "lb_upstream": 20, "backend": 10})
    assert out["lost"] == 100.0
    assert out["generator_send"] == 5.0
    assert out["generator_receive"] == 5.0
    assert out["unaccounted"] == 20.0
    assert sum(out[k] for k in udploss.WHERE) == out["lost"]
