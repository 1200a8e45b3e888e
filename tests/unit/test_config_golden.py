"""Golden tests of the configuration compiler: each tests/golden/config/NAME.toml must fail to load
with exactly the report in NAME.err (the file name in messages is NAME.toml). The host is this
machine with a fixed `eth0` (tests/unit/fakehost.py), which the VRRP cases name, that may set
IP_TRANSPARENT except in the cases named *_unprivileged."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from l4lb.config import ConfigError, load_text

from .fakehost import ExampleHost

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "config"
CASES = sorted(GOLDEN.glob("*.toml"))


def test_golden_cases_exist_and_pair_up() -> None:
    assert len(CASES) >= 20
    tomls = {p.stem for p in CASES}
    errs = {p.stem for p in GOLDEN.glob("*.err")}
    assert tomls == errs


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_golden(case: Path) -> None:
    expected = case.with_suffix(".err").read_text()
    with pytest.raises(ConfigError) as info:
        load_text(case.read_text(), case.name, host=ExampleHost(
            transparent=errno.EPERM if case.stem.endswith("_unprivileged") else 0))
    assert str(info.value) + "\n" == expected
    # the report is the diagnostics, in order, and the count line
    lines = expected.splitlines()
    assert lines[:-1] == [str(d) for d in info.value.diagnostics]
    n = len(info.value.diagnostics)
    assert lines[-1] == ("1 error" if n == 1 else f"{n} errors")


def test_reference_shows_a_golden_example_verbatim() -> None:
    doc = (GOLDEN.parents[1].parent / "docs" / "configuration.md").read_text()
    example = GOLDEN / "docs_example.toml"
    assert example.read_text() in doc
    assert example.with_suffix(".err").read_text() in doc
