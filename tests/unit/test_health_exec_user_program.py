"""review12: the load's check of a kind = "exec" command[0] is made for the user the command
runs as (command_user), not for the daemon's own user: a program that only root may run, or
one in a directory that user cannot search, can never run as command_user."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.config.host import THIS_HOST

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (files of other users)")

SERVICE = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
backends = [{{ address = "127.0.0.1:9001" }}]

  [services.health]
  kind = "exec"
  command = ["{program}"]
{user}"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:  # pytest's own is under a root-only directory
    top = Path(tempfile.mkdtemp(prefix="l4lb-review12-", dir="/tmp"))
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top)


def _program(directory: Path, mode: int) -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    os.chmod(directory, 0o755)
    program = directory / "check"
    program.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(program, mode)
    return program


def test_a_root_only_program_is_refused_for_command_user(tmp_path: Path) -> None:
    program = _program(tmp_path / "bin", 0o700)
    nobody = pwd.getpwnam("nobody")
    assert THIS_HOST.program_problem(str(program)) is None  # root may run it
    assert THIS_HOST.program_problem(str(program), (nobody.pw_uid, nobody.pw_gid)) == \
        "is not executable by that user"
    with pytest.raises(ConfigError) as info:
        load_text(SERVICE.format(program=program, user='  command_user = "nobody"\n'),
                  "t.toml", host=THIS_HOST)
    assert [str(d) for d in info.value.diagnostics] == [
        f't.toml:8:14: error: services[0] ("web"): health.command[0]: "{program}" is not '
        'executable by that user (command_user "nobody")']
    # without command_user it runs as the daemon's user (root here): fine
    load_text(SERVICE.format(program=program, user=""), "t.toml", host=THIS_HOST)


def test_a_directory_the_user_cannot_search_is_refused(tmp_path: Path) -> None:
    program = _program(tmp_path / "private", 0o755)
    os.chmod(program.parent, 0o700)
    nobody = pwd.getpwnam("nobody")
    assert THIS_HOST.program_problem(str(program), (nobody.pw_uid, nobody.pw_gid)) == \
        f"is not reachable by that user (no search permission on {program.parent})"
    os.chmod(program.parent, 0o711)
    assert THIS_HOST.program_problem(str(program), (nobody.pw_uid, nobody.pw_gid)) is None


def test_group_and_other_bits_are_judged_for_the_user(tmp_path: Path) -> None:
    program = _program(tmp_path / "bin", 0o750)
    nobody = pwd.getpwnam("nobody")
    os.chown(program, 0, nobody.pw_gid)  # its primary group may run it
    assert THIS_HOST.program_problem(str(program), (nobody.pw_uid, nobody.pw_gid)) is None
    os.chown(program, nobody.pw_uid, 0)
    os.chmod(program, 0o055)  # the owner's own bits decide for the owner
    assert THIS_HOST.program_problem(str(program), (nobody.pw_uid, nobody.pw_gid)) == \
        "is not executable by that user"
