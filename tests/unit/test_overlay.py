"""Runtime backend additions and removals over the file's configuration."""

from __future__ import annotations

import pytest

from l4lb.config import load_text
from l4lb.overlay import Overlay, OverlayError
from l4lb.state import address_text

FILE = """
[[services]]
name = "web"
listen = ["127.0.0.1:80"]
  [[services.backends]]
  address = "127.0.0.1:1"
  [[services.backends]]
  address = "127.0.0.1:2"
  name = "two"
"""


def addresses(overlay: Overlay, text: str = FILE) -> list[str]:
    config = overlay.apply(load_text(text, "f.toml"))
    return [address_text(b) for b in config.services[0].backends]


def test_add_and_remove_show_as_differences() -> None:
    file_config = load_text(FILE, "f.toml")
    ov = Overlay()
    ov.add(file_config, "web", "127.0.0.1:3", weight=5, name="three")
    running = ov.apply(file_config)
    assert addresses(ov) == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert running.services[0].backends[2].weight == 5
    assert ov.remove(running, "web", "two") == "127.0.0.1:2"
    assert addresses(ov) == ["127.0.0.1:1", "127.0.0.1:3"]
    assert ov.differences("web") == {"added": ["127.0.0.1:3"], "removed": ["127.0.0.1:2"]}
    # removing a runtime addition just forgets it
    ov.remove(ov.apply(file_config), "web", "three")
    assert ov.differences("web") == {"added": [], "removed": ["127.0.0.1:2"]}
    # re-adding a file backend that was removed replaces it (no duplicate), new weight
    ov.add(ov.apply(file_config), "web", "127.0.0.1:2", weight=9)
    assert addresses(ov) == ["127.0.0.1:1", "127.0.0.1:2"]
    assert ov.apply(file_config).services[0].backends[1].weight == 9


@pytest.mark.parametrize(("args", "message"), [
    (("api", "127.0.0.1:3"), r"no service named 'api' \(services: web\)"),
    (("web", "localhost:3"), r"address 'localhost:3': .*IP address"),
    (("web", "0.0.0.0:3"), r"address '0.0.0.0:3'"),
    (("web", "127.0.0.1:1"), r"already has backend 127.0.0.1:1"),
])
def test_bad_additions_name_the_problem(args: tuple[str, str], message: str) -> None:
    with pytest.raises(OverlayError, match=message):
        Overlay().add(load_text(FILE, "f.toml"), *args)
    with pytest.raises(OverlayError, match=r"weight 0 out of range 1\.\.256"):
        Overlay().add(load_text(FILE, "f.toml"), "web", "127.0.0.1:9", weight=0)


def test_removals_name_the_problem() -> None:
    config = load_text(FILE, "f.toml")
    ov = Overlay()
    with pytest.raises(OverlayError, match=r"has no backend 'x' \(backends: 127.0.0.1:1, "):
        ov.remove(config, "web", "x")
    ov.remove(config, "web", "127.0.0.1:1")
    with pytest.raises(OverlayError, match="is the last backend of service 'web'; disable"):
        ov.remove(ov.apply(config), "web", "two")


def test_reload_keeps_changes_that_still_make_sense() -> None:
    file_config = load_text(FILE, "f.toml")
    ov = Overlay()
    ov.add(file_config, "web", "127.0.0.1:3")
    ov.remove(ov.apply(file_config), "web", "127.0.0.1:1")
    new_file = FILE.replace('address = "127.0.0.1:1"', 'address = "127.0.0.1:7"')
    kept, notes = ov.reconciled(load_text(new_file, "f.toml"))
    assert notes == ["runtime removal of web/127.0.0.1:1 ended: the file no longer has it"]
    assert addresses(kept, new_file) == ["127.0.0.1:7", "127.0.0.1:2", "127.0.0.1:3"]
    assert ov.removed == {("web", "127.0.0.1:1")}  # the original is untouched
    gone, notes = ov.reconciled(load_text(new_file.replace('"web"', '"www"'), "f.toml"))
    assert "runtime backend web/127.0.0.1:3 dropped: service is gone" in notes
    assert gone.added == {}


FILE_NAMED = FILE + """
  [[services.backends]]
  address = "[::1]:4"
  name = "[::1]:5"
"""


@pytest.mark.parametrize("address, name, says", [
    # the same text is already a duplicate name (an unnamed backend is named by its address)
    ("127.0.0.1:3", "127.0.0.1:1", "already has a backend named '127.0.0.1:1'"),
    # another spelling of an address is caught too, both ways round
    ("[::1]:3", "[0::1]:4", "name '\\[0::1\\]:4' is the address of backend \\[::1\\]:4"),
    ("[0:0::1]:5", "", "is the name of backend \\[::1\\]:4"),
    ("127.0.0.1:3", "127.0.0.01:2", None),  # not an address: a plain name
])
def test_add_refuses_a_name_that_is_another_backends_address(
        address: str, name: str, says: str | None) -> None:
    running = load_text(FILE_NAMED, "f.toml")
    ov = Overlay()
    if says is None:
        assert ov.add(running, "web", address, name=name).name == name
        return
    with pytest.raises(OverlayError, match=says):
        ov.add(running, "web", address, name=name)
