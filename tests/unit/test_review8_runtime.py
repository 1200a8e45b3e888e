"""Review 8, the runtime API against the file: an add-backend or remove-backend after a reload
keeps what waits for a restart waiting (it used to take the file's restart-only values over as
if they ran), and re-adding a file backend that a remove-backend took out undoes the removal
(it used to count as "added at run time" for good, and outlived its removal from the file)."""

from __future__ import annotations

from pathlib import Path

from l4lb.overlay import Overlay

from .test_review6_reload import make_daemon, ports, service, write  # noqa: F401 (fixture)


def test_runtime_changes_keep_restart_only_settings_waiting(tmp_path: Path,
                                                           ports: tuple[int, int]) -> None:  # noqa: F811
    body = service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9002"])
    path = write(tmp_path, "listen_backlog = 128\n" + body)
    daemon, _ = make_daemon(path)
    path.write_text(path.read_text().replace("listen_backlog = 128", "listen_backlog = 64"))
    assert daemon.reload()["restart_needed"] == ["listen_backlog"]
    assert daemon.config.global_.listen_backlog == 128  # what runs
    daemon.cmd_add_backend("web", "127.0.0.1:9003")
    assert daemon.config.global_.listen_backlog == 128  # still what runs
    daemon.cmd_remove_backend("web", "127.0.0.1:9003")
    assert daemon.config.global_.listen_backlog == 128
    assert daemon.reload()["restart_needed"] == ["listen_backlog"]  # and still reported


def test_re_adding_a_removed_file_backend_undoes_the_removal(tmp_path: Path,
                                                              ports: tuple[int, int]) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9002"]))
    daemon, _ = make_daemon(path)
    daemon.cmd_remove_backend("web", "127.0.0.1:9002")
    assert daemon.overlay.differences("web") == {"added": [], "removed": ["127.0.0.1:9002"]}
    reply = daemon.cmd_add_backend("web", "127.0.0.1:9002")
    assert reply["differences"] == {"added": [], "removed": []}
    assert [v.address for v in daemon.backend_views("web")] == ["127.0.0.1:9001",
                                                                "127.0.0.1:9002"]
    # the file drops it: the reload drops it, since nothing at run time holds it any more
    path.write_text(path.read_text().replace('\n  [[services.backends]]\n  address = '
                                             '"127.0.0.1:9002"\n', ""))
    assert "backends removed: web/127.0.0.1:9002" in daemon.reload()["changes"]
    assert [v.address for v in daemon.backend_views("web")] == ["127.0.0.1:9001"]


def test_re_adding_with_other_settings_is_a_runtime_change(tmp_path: Path,
                                                           ports: tuple[int, int]) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9002"]))
    daemon, _ = make_daemon(path)
    daemon.cmd_remove_backend("web", "127.0.0.1:9002")
    daemon.cmd_add_backend("web", "127.0.0.1:9002", weight=5)
    assert daemon.overlay.differences("web") == {"added": ["127.0.0.1:9002"], "removed": []}
    weights = {v.address: v.weight for v in daemon.backend_views("web")}
    assert weights == {"127.0.0.1:9001": 1, "127.0.0.1:9002": 5}


def test_the_overlay_matches_a_removed_backend_by_endpoint_however_spelled(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["[::1]:9001", "[0:0::1]:9002"]))
    daemon, _ = make_daemon(path)
    assert daemon.file_config is not None
    overlay = Overlay(removed={("web", "[0:0::1]:9002")})
    back = overlay.add(overlay.apply(daemon.file_config), "web", "[::1]:9002",
                       file=daemon.file_config)
    assert overlay.removed == set() and overlay.added == {}
    assert back in daemon.file_config.services[0].backends
